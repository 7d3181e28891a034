# Runs before the user's own Sieve script: mail rspamd marked as spam ("add header" action, the
# X-Spam: Yes header of its milter) goes to Junk instead of INBOX.
require ["fileinto", "mailbox"];
if header :is "X-Spam" "Yes" {
  fileinto :create "Junk";
  stop;
}

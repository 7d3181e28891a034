//! Telegram, through teloxide: alerts out (sendMessage), commands in (getUpdates, long
//! polling). Commands are answered only in the chats of `chat_ids`; any other chat gets no
//! answer at all, and the attempt is logged. The bot token never appears in a log or an error:
//! the Bot API puts it in every URL, so error texts are scrubbed.

use super::{backoff, ChannelConfig, Outgoing, SendError};
use teloxide::prelude::*;
use teloxide::types::{ChatId, UpdateKind};
use teloxide::RequestError;

pub struct Telegram {
    bot: Bot,
    token: String,
    pub chat_ids: Vec<i64>,
}

/// A command from an allowed chat, for the daemon to answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Status,
    Apps,
    Bans,
    Unban(String),
    Silence(String, String),
    Ack,
    Help,
}

impl Telegram {
    pub fn new(ch: &ChannelConfig) -> crate::error::Result<Telegram> {
        let path = ch
            .token_file
            .as_ref()
            .expect("validated: telegram has a token_file");
        let token = super::read_secret(path)?;
        let mut bot = Bot::new(token.clone());
        if let Some(url) = &ch.url {
            let url = reqwest_url(url).ok_or_else(|| {
                crate::error::Error::bad_input(format!("telegram url {url:?} is not a URL"))
            })?;
            bot = bot.set_api_url(url);
        }
        Ok(Telegram {
            bot,
            token,
            chat_ids: ch.chat_ids.clone(),
        })
    }

    fn scrub(&self, text: String) -> String {
        if self.token.is_empty() {
            text
        } else {
            text.replace(&self.token, "<token>")
        }
    }

    /// Sends one alert to every configured chat that has not had it yet (`done` remembers
    /// which did, so a retry after a failure in the second chat does not repeat the first).
    pub async fn send(&self, msg: &Outgoing, done: &mut Vec<i64>) -> Result<(), SendError> {
        for chat in &self.chat_ids {
            if done.contains(chat) {
                continue;
            }
            match self.bot.send_message(ChatId(*chat), msg.text.clone()).await {
                Ok(_) => done.push(*chat),
                Err(e) => return Err(self.classify(e, msg.attempts)),
            }
        }
        Ok(())
    }

    fn classify(&self, e: RequestError, attempts: u32) -> SendError {
        let text = self.scrub(e.to_string());
        match e {
            RequestError::RetryAfter(s) => SendError::Retry(u64::from(s.seconds()).max(1), text),
            RequestError::Network(_) | RequestError::InvalidJson { .. } | RequestError::Io(_) => {
                SendError::Retry(backoff(attempts), text)
            }
            // Unknown API errors include the server's own failures (500): worth another try.
            RequestError::Api(teloxide::ApiError::Unknown(_)) => {
                SendError::Retry(backoff(attempts), text)
            }
            _ => SendError::Refused(text),
        }
    }

    /// Waits for the next updates (long polling) and returns the commands of allowed chats,
    /// with their chat; the offset moves past everything read.
    pub async fn commands(&self, offset: &mut i32) -> Result<Vec<(i64, Command)>, String> {
        let updates = self
            .bot
            .get_updates()
            .offset(*offset)
            .timeout(25)
            .await
            .map_err(|e| self.scrub(e.to_string()))?;
        let mut out = Vec::new();
        for u in updates {
            *offset = (u.id.0 as i32).saturating_add(1);
            let UpdateKind::Message(m) = u.kind else {
                continue;
            };
            let Some(text) = m.text() else { continue };
            if !self.chat_ids.contains(&m.chat.id.0) {
                tracing::warn!(
                    "telegram: command from chat {} refused: not in chat_ids",
                    m.chat.id.0
                );
                continue;
            }
            out.push((m.chat.id.0, parse_command(text)));
        }
        Ok(out)
    }

    pub async fn reply(&self, chat: i64, text: String) -> Result<(), String> {
        self.bot
            .send_message(ChatId(chat), text)
            .await
            .map(|_| ())
            .map_err(|e| self.scrub(e.to_string()))
    }
}

fn reqwest_url(url: &str) -> Option<reqwest::Url> {
    reqwest::Url::parse(url).ok()
}

/// `/unban 203.0.113.5`, `/silence disk-full 2h`, `/status@MyBot`...
pub fn parse_command(text: &str) -> Command {
    let mut words = text.split_whitespace();
    let head = words.next().unwrap_or("");
    let name = head.split('@').next().unwrap_or("").to_ascii_lowercase();
    let args: Vec<String> = words.map(String::from).collect();
    match (name.as_str(), args.as_slice()) {
        ("/status", _) => Command::Status,
        ("/apps", _) => Command::Apps,
        ("/bans", _) => Command::Bans,
        ("/unban", [addr]) => Command::Unban(addr.clone()),
        ("/silence", [rule, d]) => Command::Silence(rule.clone(), d.clone()),
        ("/ack", _) => Command::Ack,
        _ => Command::Help,
    }
}

pub const HELP: &str = "Commands: /status, /apps, /bans, /unban ADDRESS, /silence RULE DURATION (e.g. /silence disk-filling 2h), /ack";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_parsed() {
        assert_eq!(parse_command("/status"), Command::Status);
        assert_eq!(parse_command("/status@IlotBot"), Command::Status);
        assert_eq!(
            parse_command("/unban 203.0.113.5"),
            Command::Unban("203.0.113.5".into())
        );
        assert_eq!(
            parse_command("/silence disk-full 2h"),
            Command::Silence("disk-full".into(), "2h".into())
        );
        assert_eq!(parse_command("/unban"), Command::Help);
        assert_eq!(parse_command("hello"), Command::Help);
    }
}

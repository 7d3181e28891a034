-- ilot/mail:1.0: mail of a domain that is signed is deferred rather than sent unsigned
-- (lua/ilot_dkim.lua); a logged-in user's From and Sender headers must be addresses the login
-- owns (lua/ilot_sender.lua).
require('ilot_dkim').register_guard()
require('ilot_sender').register()

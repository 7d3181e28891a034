-- ilot/mail:1.0: mail of a domain that is signed is deferred rather than sent unsigned
-- (lua/ilot_dkim.lua).
require('ilot_dkim').register_guard()

-- ilot/mail:1.0: a logged-in user sends as the addresses they own, in the header too.
--
-- Postfix already refuses a MAIL FROM the login does not own (smtpd_sender_login_maps +
-- reject_sender_login_mismatch, master.cf), but the header From is what the recipient sees and
-- what DKIM and DMARC align with. This prefilter refuses authenticated mail when an address of
-- a From or Sender header is not one the login may send as, with a permanent 5xx naming the
-- login and what it may use, before dkim_signing could sign it:
--
--   554 5.7.1 From ann@example.org is not yours: you are logged in as bob@example.org
--   and may send as bob@example.org (and its aliases info@example.org) only
--
-- Who owns what is /etc/ilot-mail/senders, the file Postfix reads ("address owner1,owner2"
-- lines: a mailbox owns itself, an alias is owned by the local mailboxes it reaches), read as it
-- is on disk when a message is checked (a small file; no map, no reload, like selectors.map in
-- ilot_dkim.lua). An address with a +detail counts as its base address, as in Postfix.
-- Unauthenticated mail (port 25, and the container's own, such as Sieve's vacation replies) is
-- not checked here.

local rspamd_logger = require 'rspamd_logger'
local rspamd_util = require 'rspamd_util'

local exports = {}
local senders_path = '/etc/ilot-mail/senders'

-- address -> { owner = true, ... }, lowercased, or nil when the file cannot be read.
local function owners()
  local f = io.open(senders_path, 'r')
  if not f then
    return nil
  end
  local out = {}
  for line in f:lines() do
    local address, list = line:match('^%s*([^%s#]+)%s+(%S+)')
    if address then
      local set = {}
      for o in list:gmatch('[^,]+') do
        set[o:lower()] = true
      end
      out[address:lower()] = set
    end
  end
  f:close()
  return out
end

-- Whether `login` may send as `address` (both lowercased).
local function may_send_as(map, login, address)
  local set = map[address]
  if not set then
    -- user+detail@domain is user@domain (recipient_delimiter = +).
    local user, domain = address:match('^([^@]+)@(.+)$')
    local base = user and user:match('^([^+]+)%+')
    if base then
      set = map[base .. '@' .. domain]
    end
  end
  return set ~= nil and set[login] == true
end

-- The addresses of every header `name` of the task: a list of lowercased addresses, or nil
-- when one of them cannot be read.
local function header_addresses(task, name)
  local out = {}
  local headers = task:get_header_full(name) or {}
  for _, h in ipairs(headers) do
    local value = h.decoded or h.value or ''
    local parsed = rspamd_util.parse_mail_address(value, task:get_mempool())
    if not parsed or #parsed == 0 then
      return nil, value
    end
    for _, a in ipairs(parsed) do
      if not a.addr or a.addr == '' or not a.domain or a.domain == '' then
        return nil, value
      end
      table.insert(out, a.addr:lower())
    end
  end
  return out
end

-- What the login may send as, for the message: itself, and the aliases it owns.
local function owned_by(map, login)
  local own = {}
  for address, set in pairs(map) do
    if set[login] and address ~= login then
      table.insert(own, address)
    end
  end
  table.sort(own)
  return own
end

local function refuse(task, login, what, message)
  rspamd_logger.infox(task, 'refused: %s (logged in as %s)', what, login)
  task:insert_result('ILOT_SENDER_NOT_OWNED', 1.0, what)
  task:set_pre_result({
    action = 'reject',
    message = message,
    module = 'ilot_sender',
  })
end

local function check(task)
  local login = task:get_user()
  if not login or login == '' then
    return
  end
  login = login:lower()
  local map = owners()
  if not map then
    rspamd_logger.errx(task, 'cannot read %s: mail of %s deferred', senders_path, login)
    task:set_pre_result({
      action = 'soft reject',
      message = 'the list of who may send as whom is missing, try again later',
      module = 'ilot_sender',
    })
    return
  end
  local own = owned_by(map, login)
  local allowed = login .. ' (and its aliases)'
  if #own > 0 then
    allowed = login .. ' (and its aliases ' .. table.concat(own, ', ') .. ')'
  end
  local from, bad_from = header_addresses(task, 'From')
  if not from then
    refuse(task, login, 'unreadable From', string.format(
      'the From header "%s" is not an address: you are logged in as %s and may send as %s only',
      bad_from, login, allowed))
    return
  end
  if #from == 0 then
    refuse(task, login, 'no From', string.format(
      'a message needs a From header: you are logged in as %s and may send as %s only',
      login, allowed))
    return
  end
  local sender, bad_sender = header_addresses(task, 'Sender')
  if not sender then
    refuse(task, login, 'unreadable Sender', string.format(
      'the Sender header "%s" is not an address: you are logged in as %s and may send as %s only',
      bad_sender, login, allowed))
    return
  end
  for _, pair in ipairs({ { 'From', from }, { 'Sender', sender } }) do
    for _, address in ipairs(pair[2]) do
      if not may_send_as(map, login, address) then
        refuse(task, login, pair[1] .. ' ' .. address, string.format(
          '%s %s is not yours: you are logged in as %s and may send as %s only',
          pair[1], address, login, allowed))
        return
      end
    end
  end
end

function exports.register()
  rspamd_config:register_symbol({
    name = 'ILOT_SENDER_NOT_OWNED',
    type = 'prefilter',
    flags = 'empty',
    group = 'policies',
    score = 0.0,
    priority = 10,
    callback = check,
  })
end

return exports

-- ilot/mail:1.0: which key signs a message, read from /etc/ilot-mail/dkim as it is on disk now,
-- and a guard: mail of a domain that is signed never leaves unsigned.
--
-- dkim_signing (local.d/dkim_signing.conf) asks sign_condition() below. It decides whether a
-- message is ours to sign, and for which domain, with dkim_signing's own code and settings
-- (lua_dkim_tools.prepare_dkim_signing: authenticated or local, From domain, user domain...), then
-- looks the domain's selector up in selectors.map, read at that moment. No rspamd map (watched
-- every few seconds) and no reload (which cuts the milter sessions of open SMTP connections): a
-- rotation applies from the next message on.
--
-- When signing fails all the same (the key does not load...), dkim_signing only logs it, and the
-- message would go out unsigned, to fail DMARC at the receiver. The postfilter ILOT_DKIM_UNSIGNED
-- defers such a message instead (451, "soft reject"): the client, or Postfix for local mail,
-- tries again later.

local dkim_sign_tools = require 'lua_dkim_tools'
local rspamd_logger = require 'rspamd_logger'

local N = 'dkim_signing'
local exports = {}
local map_path = '/etc/ilot-mail/dkim/selectors.map'

local opts = rspamd_config:get_all_opt('dkim_signing') or {}

-- dkim_signing's own defaults (rspamd 3.4, plugins/dkim_signing.lua), then its settings from
-- local.d/dkim_signing.conf, without sign_condition (this) and maps. try_fallback: the answer
-- names the domain even though no selector is configured.
local settings = {
  allow_envfrom_empty = true,
  allow_hdrfrom_mismatch = false,
  allow_hdrfrom_mismatch_local = false,
  allow_hdrfrom_mismatch_sign_networks = false,
  allow_hdrfrom_multiple = false,
  allow_username_mismatch = false,
  sign_authenticated = true,
  sign_local = true,
  domain = {},
  path = '/etc/ilot-mail/dkim/$domain.$selector.key',
  selector = 'dkim',
  symbol = 'DKIM_SIGNED',
  use_domain = 'header',
  use_esld = true,
  use_redis = false,
}
do
  local own = {}
  for k, v in pairs(opts) do
    if k ~= 'sign_condition' and k ~= 'selector_map' and k ~= 'path_map' then
      own[k] = v
    end
  end
  dkim_sign_tools.process_signing_settings('ilot_dkim', settings, own)
  settings.try_fallback = true
end

-- domain -> selector, from selectors.map as it is now ("example.org ilot1" lines).
local function selectors()
  local out = {}
  local f = io.open(map_path, 'r')
  if not f then
    return out
  end
  for line in f:lines() do
    local domain, selector = line:match('^%s*([^%s#]+)%s+(%S+)')
    if domain then
      out[domain:lower()] = selector
    end
  end
  f:close()
  return out
end

-- The domain a message is to be signed for and its selector, or nil when it is not ours to sign.
local function target(task)
  local ours, p = dkim_sign_tools.prepare_dkim_signing(N, task, settings)
  if not ours or not p[1] or not p[1].domain then
    return nil
  end
  local domain = p[1].domain:lower()
  local selector = selectors()[domain]
  if not selector then
    return nil
  end
  return domain, selector
end

-- dkim_signing's sign_condition: what to sign with (dkim_signing fills $domain and $selector
-- into the key's path), or false.
function exports.sign_condition(task)
  local domain, selector = target(task)
  if not domain then
    return false
  end
  return { domain = domain, selector = selector, key = settings.path }
end

function exports.register_guard()
  rspamd_config:register_symbol({
    name = 'ILOT_DKIM_UNSIGNED',
    type = 'postfilter',
    flags = 'empty,ignore_passthrough',
    group = 'policies',
    score = 0.0,
    callback = function(task)
      if task:has_symbol(settings.symbol) then
        return
      end
      local domain = target(task)
      if not domain then
        return
      end
      rspamd_logger.errx(task, 'mail from %s is not DKIM-signed (see the error before): deferred', domain)
      task:insert_result('ILOT_DKIM_UNSIGNED', 1.0, domain)
      task:set_pre_result({
        action = 'soft reject',
        message = 'DKIM signing for ' .. domain .. ' is not ready, try again later',
        module = 'ilot_dkim',
      })
    end,
  })
end

return exports

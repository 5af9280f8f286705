-- Argo CD health of a Postwarden MailDomain or Mailbox, from its Ready condition.
-- Healthy: Ready=True for the current generation. Degraded: Ready=False and nothing is rolling
-- out. Progressing: anything else (not yet reconciled, spec not yet observed, rollout running).
local hs = { status = "Progressing", message = "Waiting for the operator to reconcile" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < generation then
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end
local ready = nil
local progressing = false
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" then
    ready = c
  elseif c.type == "Progressing" and c.status == "True" then
    progressing = true
  end
end
if ready == nil then
  return hs
end
if ready.observedGeneration ~= nil and generation ~= nil and ready.observedGeneration < generation then
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end
local detail = ready.message
if detail == nil or detail == "" then
  detail = ready.reason or ""
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = detail
elseif ready.status == "False" and not progressing then
  hs.status = "Degraded"
  hs.message = (ready.reason or "NotReady") .. ": " .. (ready.message or "")
else
  hs.message = detail
end
return hs

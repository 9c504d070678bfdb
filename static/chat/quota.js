// The plan badge, the messages left and when the next frees up (in the reader's own time), and
// a banner with an Upgrade button once 3 or fewer are left.

import {localTime} from "../page.js";

const LOW = 3;

export function showQuota(quota, plan) {
  if (!quota) return;
  const line = document.getElementById("quota");
  let text = `${quota.remaining} of ${quota.limit} messages left`;
  if (quota.resets_at) text += ` · next frees up at ${localTime(quota.resets_at)}`;
  line.textContent = text;
  const banner = document.getElementById("quota-banner");
  const bannerText = document.getElementById("quota-banner-text");
  const upgrade = document.getElementById("upgrade");
  if (quota.remaining > LOW) {
    banner.hidden = true;
    return;
  }
  banner.hidden = false;
  const when = quota.resets_at ? ` The next frees up at ${localTime(quota.resets_at)}.` : "";
  bannerText.textContent = quota.remaining === 0
    ? `You have used all ${quota.limit} messages of your ${plan.name} plan for now.${when}`
    : `${quota.remaining} of ${quota.limit} messages left on your ${plan.name} plan.${when}`;
  upgrade.hidden = plan.code !== "free";
}

// copy.js: copying an answer. navigator.clipboard needs a secure page (https, or
// localhost); on a board's plain http address the page falls back to the old copy
// command, and failing that shows the text selected in a box for Ctrl+C.

const $ = (id) => document.getElementById(id);

/**
 * Copy ``text``; ``control`` (the button) says "Copied ✓" for a moment.
 * @returns {Promise<boolean>} false when the text was shown for copying by hand
 */
export async function copyText(text, control) {
  let copied = false;
  if (window.isSecureContext && navigator.clipboard?.writeText) {
    try {
      await navigator.clipboard.writeText(text);
      copied = true;
    } catch {
      // refused (no permission, no focus): try the old way
    }
  }
  if (!copied) copied = copyWithCommand(text);
  control.focus();
  if (!copied) {
    showCopyBox(text, control);
    return false;
  }
  control.textContent = "Copied ✓";
  setTimeout(() => { control.textContent = "Copy"; }, 1500);
  return true;
}

function copyWithCommand(text) {
  const area = document.createElement("textarea");
  area.className = "copy-source";
  area.value = text;
  area.setAttribute("readonly", "");
  area.setAttribute("aria-hidden", "true");
  document.body.append(area);
  area.select();
  let copied = false;
  try {
    copied = document.execCommand("copy");
  } catch {
    copied = false;
  }
  area.remove();
  return copied;
}

let returnTo = null;

function showCopyBox(text, control) {
  returnTo = control;
  $("copy-dialog").hidden = false;
  const area = $("copy-text");
  area.value = text;
  area.focus();
  area.select();
}

function closeCopyBox() {
  $("copy-dialog").hidden = true;
  returnTo?.focus();
  returnTo = null;
}

$("copy-close").addEventListener("click", closeCopyBox);
$("copy-dialog").addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    event.stopPropagation();
    closeCopyBox();
  }
});

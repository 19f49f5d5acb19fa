// conversations.js: the chat page's list of conversations (open, rename, delete). The
// conversations themselves live in store.js.

import { editKeys, el } from "./render.js";
import { saveConversations, state } from "./store.js";

/** A button with a visible text and a name for screen readers. */
export function button(text, label, onClick) {
  const node = el("button", "", text);
  node.type = "button";
  node.setAttribute("aria-label", label);
  node.title = label;
  node.onclick = onClick;
  return node;
}

export class ConversationList {
  /**
   * @param {HTMLElement} list the <ul>
   * @param {{open: (id: string) => void, remove: (id: string) => void}} actions
   */
  constructor(list, actions) {
    this.list = list;
    this.actions = actions;
  }

  render() {
    this.list.replaceChildren(...state.conversations.map((c) => {
      const item = el("li", c.id === state.currentId ? "current" : "");
      const open = el("button", "open", c.title);
      open.type = "button";
      open.title = c.title;
      open.onclick = () => this.actions.open(c.id);
      const rename = button("✎", `Rename “${c.title}”`, () => this.rename(c, item, open));
      rename.className = "rename";
      const remove = button("✕", `Delete “${c.title}”`, () => this.actions.remove(c.id));
      remove.className = "delete";
      item.append(open, rename, remove);
      return item;
    }));
  }

  /** Rename in place: Enter (or leaving the field) keeps the new name, Esc the old one. */
  rename(conversation, item, open) {
    const input = el("input", "rename-input");
    input.value = conversation.title;
    input.setAttribute("aria-label", "New name of the conversation");
    let done = false;
    const finish = (keep) => {
      if (done) return;
      done = true;
      const title = input.value.trim();
      if (keep && title) {
        conversation.title = title.slice(0, 80);
        saveConversations();
      }
      this.render();
      const at = state.conversations.indexOf(conversation) + 1;
      this.list.querySelector(`li:nth-child(${at}) .rename`)?.focus();
    };
    editKeys(input, finish);
    input.addEventListener("blur", () => finish(true));
    open.replaceWith(input);
    input.focus();
    input.select();
  }
}

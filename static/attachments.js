// attachments.js: images picked for the next message of the chat page, by the file
// picker, by pasting into the message box or by dropping on the composer.

import { el } from "./render.js";

/** The image types the server reads, and their protocol names. */
export const FORMATS = { "image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp" };

export class Attachments {
  /**
   * @param {object} nodes {box (the thumbnails), input (type=file), button, prompt, composer}
   * @param {(files: number, skipped: number) => void} onChange told after every change
   */
  constructor(nodes, onChange) {
    /** The images: {blob, url}. */
    this.items = [];
    this.box = nodes.box;
    this.onChange = onChange;
    const input = nodes.input;
    nodes.button.addEventListener("click", () => input.click());
    input.addEventListener("change", () => {
      this.add([...input.files]);
      input.value = "";
    });
    nodes.prompt.addEventListener("paste", (event) => {
      const files = [...(event.clipboardData?.files ?? [])].filter((f) => f.type.startsWith("image/"));
      if (files.length) {
        event.preventDefault();
        this.add(files);
      }
    });
    const composer = nodes.composer;
    composer.addEventListener("dragover", (event) => {
      if (![...event.dataTransfer.types].includes("Files")) return;
      event.preventDefault();
      composer.classList.add("dragging");
    });
    composer.addEventListener("dragleave", () => composer.classList.remove("dragging"));
    composer.addEventListener("drop", (event) => {
      composer.classList.remove("dragging");
      if (!event.dataTransfer.files.length) return;
      event.preventDefault();
      this.add([...event.dataTransfer.files]);
    });
  }

  get length() {
    return this.items.length;
  }

  /** Take PNG, JPEG and WebP files; others are counted as skipped. */
  add(files) {
    let skipped = 0;
    for (const file of files) {
      if (!FORMATS[file.type]) { skipped += 1; continue; }
      this.items.push({ blob: file, url: URL.createObjectURL(file) });
    }
    this.render();
    this.onChange(this.items.length, skipped);
  }

  /** Hand the images over (to a message being sent) and clear the list. @returns {Blob[]} */
  take() {
    const blobs = this.items.map((item) => item.blob);
    for (const item of this.items) URL.revokeObjectURL(item.url);
    this.items = [];
    this.render();
    return blobs;
  }

  render() {
    this.box.replaceChildren(...this.items.map((item, index) => {
      const figure = el("figure", "thumb");
      const img = el("img");
      img.src = item.url;
      img.alt = item.blob.name || "pasted image";
      const remove = el("button", "remove", "✕");
      remove.type = "button";
      remove.setAttribute("aria-label", `Remove image ${item.blob.name || index + 1}`);
      remove.onclick = () => {
        URL.revokeObjectURL(item.url);
        this.items.splice(index, 1);
        this.render();
        this.onChange(this.items.length, 0);
      };
      figure.append(img, remove);
      return figure;
    }));
  }
}

// Stream one answer from rkstream through the Vercel AI SDK's OpenAI-compatible
// provider (the client OpenCode uses). It validates every chunk with a zod
// schema, so any shape mistake shows up as an "error" part.
//
// Usage: node ai_sdk_check.mjs <baseURL> <model> [prompt]
// <model> is the name the server serves its model under.
// Prints one JSON summary line; exits 1 on an error part or when no text arrived.
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { streamText } from "ai";

const [baseURL, model, prompt = "Say hello"] = process.argv.slice(2);
if (!baseURL || !model) {
  console.error("usage: node ai_sdk_check.mjs <baseURL> <model> [prompt]");
  process.exit(2);
}

const provider = createOpenAICompatible({ name: "rkstream", baseURL, includeUsage: true });
const result = streamText({
  model: provider(model),
  prompt,
  maxRetries: 0,
  onError: () => {}, // errors are collected from fullStream below
});

let text = "";
let finishReason = null;
let usage = null;
const errors = [];
const parts = {};
for await (const part of result.fullStream) {
  parts[part.type] = (parts[part.type] ?? 0) + 1;
  if (part.type === "text-delta") {
    text += part.text;
  } else if (part.type === "error") {
    const error = part.error;
    errors.push(error instanceof Error ? error.message : JSON.stringify(error));
  } else if (part.type === "finish") {
    finishReason = part.finishReason;
    usage = part.totalUsage;
  }
}

console.log(JSON.stringify({ text, finishReason, usage, parts, errors }));
process.exit(errors.length > 0 || text.length === 0 ? 1 : 0);

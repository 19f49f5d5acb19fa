// A tool round trip from rkstream's Anthropic Messages API through the official
// @anthropic-ai/sdk: the model calls a tool, the result goes back as a
// tool_result, the model answers. Each step's message is sent back whole
// (thinking blocks included), as Claude Code and the SDK's examples do. Then a
// bad request, which the SDK must raise as a BadRequestError.
//
// Usage: node anthropic_sdk_check.mjs <baseURL> <model> <prompt> [create|stream]
// <model> is the name the server serves its model under.
// `create` uses messages.create (whole messages), `stream` messages.stream (the
// SDK rebuilds each message from the typed events, tool input from its
// input_json_delta pieces).
// Prints one JSON summary line; exits 1 on an error, or when no tool ran or no
// final text arrived.
import Anthropic from "@anthropic-ai/sdk";

const [baseURL, model, prompt, mode = "create"] = process.argv.slice(2);
if (!baseURL || !model || !prompt || !["create", "stream"].includes(mode)) {
  console.error("usage: node anthropic_sdk_check.mjs <baseURL> <model> <prompt> [create|stream]");
  process.exit(2);
}

const client = new Anthropic({ baseURL, apiKey: "x", maxRetries: 0 });
const tools = [{
  name: "get_weather",
  description: "The weather in a city, now.",
  input_schema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
}];
const messages = [{ role: "user", content: prompt }];
const errors = [];
const executed = [];
const steps = [];
let text = "";

async function step() {
  const params = { model, max_tokens: 256, tools, messages };
  if (mode === "create") return { message: await client.messages.create(params), events: [] };
  const events = [];
  const stream = client.messages.stream(params);
  stream.on("streamEvent", (event) => events.push(event.type));
  return { message: await stream.finalMessage(), events };
}

try {
  for (let i = 0; i < 3; i++) {
    const { message, events } = await step();
    steps.push({
      stopReason: message.stop_reason,
      blocks: message.content.map((b) => b.type),
      thinking: message.content.filter((b) => b.type === "thinking")
        .map((b) => ({ thinking: b.thinking, signature: b.signature })),
      toolUses: message.content.filter((b) => b.type === "tool_use")
        .map((b) => ({ id: b.id, name: b.name, input: b.input })),
      usage: message.usage,
      events: [...new Set(events)],
    });
    messages.push({ role: "assistant", content: message.content });
    const calls = message.content.filter((b) => b.type === "tool_use");
    if (calls.length === 0) {
      text = message.content.filter((b) => b.type === "text").map((b) => b.text).join("");
      break;
    }
    messages.push({
      role: "user",
      // The stand-in runtime answers what a directive in its prompt says: the
      // result carries the reply of the next step.
      content: calls.map((c) => {
        executed.push(c.input.city);
        return { type: "tool_result", tool_use_id: c.id,
                 content: `sunny in ${c.input.city} [[reply=It is sunny in ${c.input.city}.]]` };
      }),
    });
  }
} catch (error) {
  errors.push(error instanceof Error ? error.message : JSON.stringify(error));
}

let badRequest = null;
try {
  await client.messages.create({ model, max_tokens: 0,
                                messages: [{ role: "user", content: "x" }] });
  errors.push("max_tokens 0 was not refused");
} catch (error) {
  badRequest = { isBadRequest: error instanceof Anthropic.BadRequestError, status: error.status,
                 type: error.error?.error?.type ?? null, message: error.error?.error?.message };
}

console.log(JSON.stringify({ mode, text, steps, executed, badRequest, errors }));
process.exit(errors.length > 0 || executed.length === 0 || text.length === 0 ? 1 : 0);

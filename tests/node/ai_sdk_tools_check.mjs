// A tool round trip from rkstream through the Vercel AI SDK's OpenAI-compatible
// provider (the client OpenCode uses): the model calls a tool declared with a
// zod schema, the SDK runs it and sends the result back, the model answers.
// The SDK validates every response (and chunk) with zod and the call's input
// with the tool's schema, so any shape mistake shows up as an error.
//
// Usage: node ai_sdk_tools_check.mjs <baseURL> <model> <prompt> [generate|stream] [required-first]
// <model> is the name the server serves its model under.
// `generate` uses generateText (whole answers), `stream` uses streamText
// (tool calls as argument deltas). Both loop with stopWhen: stepCountIs(3).
// `required-first` sets toolChoice "required" on the first step and "none"
// after it (prepareStep): a model that would not call by itself (the CPU
// engine's small SmolLM2) is made to, by llama.cpp's grammar.
// Prints one JSON summary line; exits 1 on an error, or when no tool ran or
// no final text arrived.
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const [baseURL, model, prompt, mode = "generate", choice = ""] = process.argv.slice(2);
if (!baseURL || !model || !prompt || !["generate", "stream"].includes(mode)
    || !["", "required-first"].includes(choice)) {
  console.error("usage: node ai_sdk_tools_check.mjs <baseURL> <model> <prompt> [generate|stream] "
                + "[required-first]");
  process.exit(2);
}

const executed = [];
const tools = {
  get_weather: tool({
    description: "The weather in a city, now.",
    inputSchema: z.object({ city: z.string().describe("The city's name") }),
    // The stand-in runtime answers what a directive in its prompt says: the
    // result carries the reply of the next step.
    execute: async ({ city }) => {
      executed.push(city);
      return `sunny in ${city} [[reply=It is sunny in ${city}.]]`;
    },
  }),
};

const provider = createOpenAICompatible({ name: "rkstream", baseURL, includeUsage: true });
const options = {
  model: provider(model),
  prompt,
  tools,
  stopWhen: stepCountIs(3),
  maxRetries: 0,
};
if (choice === "required-first") {
  options.prepareStep = ({ stepNumber }) => ({
    toolChoice: stepNumber === 0 ? "required" : "none",
  });
}

const errors = [];
let result;
try {
  if (mode === "generate") {
    result = await generateText(options);
  } else {
    const streamed = streamText({
      ...options,
      onError: ({ error }) => {
        errors.push(error instanceof Error ? error.message : JSON.stringify(error));
      },
    });
    await streamed.consumeStream();
    result = {
      text: await streamed.text,
      steps: await streamed.steps,
      finishReason: await streamed.finishReason,
    };
  }
} catch (error) {
  errors.push(error instanceof Error ? error.message : JSON.stringify(error));
}

const steps = (result?.steps ?? []).map((step) => ({
  finishReason: step.finishReason,
  text: step.text,
  toolCalls: step.toolCalls.map((c) => ({ id: c.toolCallId, name: c.toolName, input: c.input })),
  toolResults: step.toolResults.map((r) => ({ id: r.toolCallId, output: r.output })),
  errors: step.content.filter((p) => p.type === "tool-error").map((p) => String(p.error)),
}));
for (const step of steps) errors.push(...step.errors);
const text = result?.text ?? "";
console.log(JSON.stringify({ mode, text, finishReason: result?.finishReason ?? null, steps,
                             executed, errors }));
process.exit(errors.length > 0 || executed.length === 0 || text.length === 0 ? 1 : 0);

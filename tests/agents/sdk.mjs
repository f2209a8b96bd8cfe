// The official Node SDKs through Tollgate, configured by the environment alone, as an
// application that is not changed for Tollgate would be: `new OpenAI()` reads OPENAI_BASE_URL and
// OPENAI_API_KEY, `new Anthropic()` reads ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY.
// Run by tests/agents/run.sh; prints the SDK versions on its first line.
import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";
import { readFileSync } from "node:fs";

const v = (p) => JSON.parse(readFileSync(new URL(`./node_modules/${p}/package.json`, import.meta.url), "utf8")).version;
console.log(`openai ${v("openai")}, @anthropic-ai/sdk ${v("@anthropic-ai/sdk")}`);

const openai = new OpenAI({ maxRetries: 0 });
const anthropic = new Anthropic({ maxRetries: 0 });
const check = (what, ok) => { if (!ok) throw new Error(`${what}: unexpected answer`); console.log(`  ok ${what}`); };

const chat = await openai.chat.completions.create({
  model: "gpt-4o-mini", max_tokens: 16, messages: [{ role: "user", content: "say hi" }],
});
check("openai chat.completions.create", chat.choices[0].message.content.length > 0 && chat.usage.completion_tokens === 16);

let text = "";
const stream = await openai.responses.create({ model: "gpt-4o-mini", max_output_tokens: 16, input: "say hi", stream: true });
for await (const ev of stream) if (ev.type === "response.output_text.delta") text += ev.delta;
check("openai responses.create stream", text.length > 0);

const msg = await anthropic.messages.create({
  model: "claude-sonnet-4-5", max_tokens: 16, messages: [{ role: "user", content: "say hi" }],
});
check("anthropic messages.create", msg.content[0].text.length > 0 && msg.usage.output_tokens === 16);

const ms = anthropic.messages.stream({ model: "claude-sonnet-4-5", max_tokens: 16, messages: [{ role: "user", content: "say hi" }] });
const final = await ms.finalMessage();
check("anthropic messages.stream", final.usage.output_tokens === 16);

const ct = await anthropic.messages.countTokens({ model: "claude-sonnet-4-5", messages: [{ role: "user", content: "say hi" }] });
check("anthropic messages.countTokens", ct.input_tokens > 0);

"""The official Python SDKs through Tollgate, configured by the environment alone:
openai.OpenAI() reads OPENAI_BASE_URL and OPENAI_API_KEY, anthropic.Anthropic() reads
ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY. Run by tests/agents/run.sh; prints the SDK versions first."""
import anthropic
import openai

print(f"openai {openai.__version__}, anthropic {anthropic.__version__}")
oa = openai.OpenAI(max_retries=0)
an = anthropic.Anthropic(max_retries=0)


def check(what, ok):
    if not ok:
        raise SystemExit(f"{what}: unexpected answer")
    print(f"  ok {what}")


chat = oa.chat.completions.create(model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": "say hi"}])
check("openai chat.completions.create", chat.choices[0].message.content and chat.usage.completion_tokens == 16)
text = "".join(ev.delta for ev in oa.responses.create(model="gpt-4o-mini", max_output_tokens=16, input="say hi", stream=True)
               if ev.type == "response.output_text.delta")
check("openai responses.create stream", text)
msg = an.messages.create(model="claude-sonnet-4-5", max_tokens=16, messages=[{"role": "user", "content": "say hi"}])
check("anthropic messages.create", msg.content[0].text and msg.usage.output_tokens == 16)
with an.messages.stream(model="claude-sonnet-4-5", max_tokens=16, messages=[{"role": "user", "content": "say hi"}]) as s:
    final = s.get_final_message()
check("anthropic messages.stream", final.usage.output_tokens == 16)
ct = an.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "say hi"}])
check("anthropic messages.count_tokens", ct.input_tokens > 0)

"""Chat-template rendering (eoq.chat): the SmolLM2 template against hand-written ChatML, the
HF-compatible environment, and the sandbox (templates come from untrusted model files)."""
import json
import warnings

import pytest

from eoq.chat import CHATML_TEMPLATE, ChatTemplateError, render_chat_template


@pytest.fixture(scope="module")
def smollm2_template(smollm2_path):
    from eoq import _core

    t = _core.Engine(smollm2_path, n_ctx=16, n_threads=1).chat_template
    assert t.startswith("{% for message in messages %}")  # the template these tests assume
    return t


SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def test_smollm2_default_system_prompt(smollm2_template):
    out = render_chat_template(smollm2_template, [{"role": "user", "content": "Hi there"}],
                               add_generation_prompt=True, bos_token="<|im_start|>",
                               eos_token="<|im_end|>")
    expected = ("<|im_start|>system\n" + SMOL_SYSTEM + "<|im_end|>\n"
                "<|im_start|>user\nHi there<|im_end|>\n"
                "<|im_start|>assistant\n")
    assert out == expected


def test_smollm2_own_system_and_history(smollm2_template):
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?"}]
    out = render_chat_template(smollm2_template, msgs, add_generation_prompt=False)
    expected = ("<|im_start|>system\nBe brief.<|im_end|>\n"
                "<|im_start|>user\n2+2?<|im_end|>\n"
                "<|im_start|>assistant\n4<|im_end|>\n"
                "<|im_start|>user\nAnd 3+3?<|im_end|>\n")
    assert out == expected
    out2 = render_chat_template(smollm2_template, msgs, add_generation_prompt=True)
    assert out2 == expected + "<|im_start|>assistant\n"


def test_non_ascii_content_kept_verbatim(smollm2_template):
    out = render_chat_template(smollm2_template, [{"role": "user", "content": "Café ☕ 日本 <b>&"}])
    assert "<|im_start|>user\nCafé ☕ 日本 <b>&<|im_end|>\n" in out  # no HTML escaping


def test_chatml_fallback_warns():
    with pytest.warns(UserWarning, match="no chat template"):
        out = render_chat_template("", [{"role": "user", "content": "x"}])
    assert out == "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
    with pytest.warns(UserWarning):
        assert render_chat_template(None, [{"role": "user", "content": "x"}],
                                    add_generation_prompt=False) == "<|im_start|>user\nx<|im_end|>\n"
    # An explicit template does not warn.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        render_chat_template(CHATML_TEMPLATE, [{"role": "user", "content": "x"}])


def test_hf_environment():
    # trim_blocks / lstrip_blocks: block tags leave no newline/indent behind.
    t = "{% for m in messages %}\n    {{ m['role'] }}:{{ m['content'] }}\n{% endfor %}"
    out = render_chat_template(t, [{"role": "a", "content": "1"}, {"role": "b", "content": "2"}])
    assert out == "    a:1\n    b:2\n"
    # bos/eos tokens, add_generation_prompt, extra variables, loop controls.
    t = ("{{ bos_token }}{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}"
         "{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}[GEN]{% endif %}{{ eos_token }}"
         "{{ date_string }}")
    out = render_chat_template(t, [{"role": "u", "content": "x"}, {"role": "u", "content": "y"}],
                               bos_token="<s>", eos_token="</s>", date_string="1 Jan")
    assert out == "<s>x[GEN]</s>1 Jan"
    # tojson without HTML escaping, with indent; strftime_now.
    out = render_chat_template("{{ messages[0] | tojson }}|{{ {'k': [1]} | tojson(indent=2) }}",
                               [{"role": "u", "content": "<é>&'"}])
    assert out.split("|")[0] == json.dumps({"role": "u", "content": "<é>&'"}, ensure_ascii=False)
    assert out.split("|")[1] == json.dumps({"k": [1]}, indent=2)
    year = render_chat_template("{{ strftime_now('%Y') }}", [{"role": "u", "content": ""}])
    assert year.isdigit() and len(year) == 4


def test_raise_exception_is_reported():
    t = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('roles must alternate') }}{% endif %}ok"
    assert render_chat_template(t, [{"role": "user", "content": ""}]) == "ok"
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        render_chat_template(t, [{"role": "assistant", "content": ""}])


def test_syntax_error_is_clear():
    with pytest.raises(ChatTemplateError, match="syntax error"):
        render_chat_template("{% for m in %}", [{"role": "u", "content": ""}])
    with pytest.raises(ChatTemplateError, match="syntax error"):
        render_chat_template("{% if x %}", [{"role": "u", "content": ""}])


@pytest.mark.parametrize("template", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__ }}",
    "{{ ''['__class__'] }}",
    "{{ '' | attr('__class__') }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{{ raise_exception.__globals__ }}",
    "{{ strftime_now.__globals__['__builtins__'] }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ self._TemplateReference__context }}",
    "{{ messages.append({'role': 'x'}) }}",
    "{{ messages[0].update({'role': 'x'}) }}",
    "{{ messages.pop() }}",
    "{{ '{0.__class__}'.format('') }}",
    "{{ 'x' * 1000000000 }}",
    "{{ [0] * 1000000000 }}",
    "{{ 10 ** 100000000 }}",
])
def test_sandbox_blocks_escapes(template):
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(ChatTemplateError, match="sandbox|unsafe"):
        render_chat_template(template, msgs)
    assert msgs == [{"role": "user", "content": "hi"}]  # not mutated


def test_range_is_capped():
    with pytest.raises(ChatTemplateError):
        render_chat_template("{% for i in range(10**9) %}x{% endfor %}", [{"role": "u", "content": ""}])


def test_bad_messages():
    for bad in ("hello", [{"content": "no role"}], ["text"], None, 5):
        with pytest.raises(ChatTemplateError, match="messages"):
            render_chat_template(CHATML_TEMPLATE, bad)


def test_chat_template_error_is_value_error():
    assert issubclass(ChatTemplateError, ValueError)

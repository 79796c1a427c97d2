"""Does llama.cpp itself load what ``personachat export --gguf`` writes, and reply the same?

For each GGUF format (f32, f16, q8_0) the model is exported with personachat, loaded in
llama.cpp through its C API, and asked the same persona talks: the prompt is rendered with
the exported chat template, tokenized by llama.cpp (the ids must equal personachat's), then
decoded greedily (argmax of llama.cpp's logits until an end-of-generation token). The reply
must equal personachat's float32 greedy reply (``cpu_bf16: false``).

llama.cpp comes from PyPI, outside the repository and never in CI: the wheel
``llama-cpp-cffi`` 0.4.42 carries a CPU build, ``_llama_cpp_cpu*.so``, a CFFI module whose
``lib`` is llama.cpp's C API. It was linked against GCC 13's libstdc++; on an older one (Debian
12) two symbols are missing, and a tiny shim library defining them (compiled here with g++ on
first use, into a temporary folder) makes it load. Point ``PERSONACHAT_LLAMACPP_CFFI`` at the
``.so`` (or install the wheel: ``pip install --no-deps llama-cpp-cffi==0.4.42``; its Python
wrapper, which wants the model hub, is never imported).

    python benchmarks/llamacpp_export_check.py                 # a tiny random Llama
    python benchmarks/llamacpp_export_check.py --model smollm2 # SmolLM2-135M (Q4_1 weights)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ENV = "PERSONACHAT_LLAMACPP_CFFI"
SHIM = """#include <exception>
#include <ios>
extern "C" void __cxa_call_terminate(void*) noexcept { std::terminate(); }
namespace std { void ios_base_library_init() { static ios_base::Init init; } }
"""
PERSONA = ["i have a cat named tom .", "i work as a nurse ."]
TALKS = [
    ("hi , what do you do ?", []),
    ("do you have pets ?", ["hello !", "hi there , how are you ?"]),
    ("what is your favorite food ?", []),
    ("where do you live ?", ["hi !", "hello , how are you ?"]),
    ("tell me about your job .", []),
]


def find_library() -> Path | None:
    """The llama.cpp CFFI module: ``$PERSONACHAT_LLAMACPP_CFFI``, else the installed wheel's."""
    if os.environ.get(ENV):
        path = Path(os.environ[ENV])
        return path if path.is_file() else None
    spec = importlib.util.find_spec("llama")  # located, never imported (it wants the hub)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(folder).glob("_llama_cpp_cpu*.so"))
        if found:
            return found[0]
    return None


def preload_shim() -> None:
    """Compile and load (globally) the two GCC 13 libstdc++ symbols the wheel needs."""
    import ctypes

    folder = Path(tempfile.mkdtemp(prefix="llamacpp-shim-"))
    (folder / "shim.cpp").write_text(SHIM)
    command = ["g++", "-O2", "-shared", "-fPIC", "-o", "libshim.so", "shim.cpp"]
    subprocess.run(command, cwd=folder, check=True, capture_output=True)
    ctypes.CDLL(str(folder / "libshim.so"), mode=ctypes.RTLD_GLOBAL)


def load_llamacpp():
    """llama.cpp's CFFI module (``.ffi``, ``.lib``), or None where it is not installed or
    does not load on this machine."""
    path = find_library()
    if path is None:
        return None
    name = path.name.split(".")[0]
    for attempt in range(2):
        try:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        except ImportError:
            if attempt:
                return None
            try:
                preload_shim()
            except (OSError, subprocess.CalledProcessError):
                return None
        else:
            module.lib.llama_backend_init()
            quiet(module)
            return module
    return None


def quiet(module) -> None:
    """llama.cpp's log (every metadata key of every load) to nowhere."""
    try:
        callback = module.ffi.callback("ggml_log_callback", lambda level, text, data: None)
    except (module.ffi.error, TypeError):
        return
    module.quiet_callback = callback  # kept alive as long as the module
    module.lib.llama_log_set(callback, module.ffi.NULL)


class LlamaCpp:
    """One GGUF model in llama.cpp: tokenize, and decode greedily from a prompt."""

    def __init__(self, module, path: Path, threads: int = 1, context: int = 1024) -> None:
        self.ffi, self.lib = module.ffi, module.lib
        params = self.lib.llama_model_default_params()
        self.model = self.lib.llama_model_load_from_file(str(path).encode(), params)
        if self.model == self.ffi.NULL:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab = self.lib.llama_model_get_vocab(self.model)
        self.size = self.lib.llama_vocab_n_tokens(self.vocab)
        self.context_params = self.lib.llama_context_default_params()
        self.context_params.n_ctx = context
        self.context_params.n_batch = context
        self.context_params.n_threads = threads
        self.context_params.n_threads_batch = threads

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's ids for ``text``, special tokens parsed, no BOS added."""
        data = text.encode()
        out = self.ffi.new("llama_token[]", len(data) + 8)
        n = self.lib.llama_tokenize(self.vocab, data, len(data), out, len(data) + 8, False, True)
        if n < 0:
            raise RuntimeError(f"llama.cpp could not tokenize {text[:40]!r}")
        return list(out[0:n])

    def greedy(self, prompt: list[int], max_new: int) -> tuple[list[int], float]:
        """Greedy continuation of ``prompt`` (ids) up to an end-of-generation token; and the
        seconds it took."""
        ctx = self.lib.llama_init_from_model(self.model, self.context_params)
        started = time.perf_counter()
        try:
            tokens = self.ffi.new("llama_token[]", prompt)
            batch = self.lib.llama_batch_get_one(tokens, len(prompt))
            out = []
            for _ in range(max_new):
                if self.lib.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed")
                logits = self.lib.llama_get_logits_ith(ctx, -1)
                row = np.frombuffer(self.ffi.buffer(logits, self.size * 4), dtype=np.float32)
                token = int(row.argmax())
                if self.lib.llama_vocab_is_eog(self.vocab, token):
                    break
                out.append(token)
                tokens = self.ffi.new("llama_token[]", [token])
                batch = self.lib.llama_batch_get_one(tokens, 1)
            return out, time.perf_counter() - started
        finally:
            self.lib.llama_free(ctx)

    def close(self) -> None:
        self.lib.llama_model_free(self.model)


def tiny_model(folder: Path) -> Path:
    """A random tiny Llama with a ChatML tokenizer, saved by personachat (as the tests do)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from personachat import ConvAIModel
    from tests.tiny_models import build_tiny_chat_model

    texts = [*PERSONA, *(m for talk in TALKS for m in [talk[0], *talk[1]])]
    build_tiny_chat_model(folder / "base", texts * 4, "llama")
    model = ConvAIModel("auto", folder / "base", use_cuda=False)
    return model.save_model(folder / "saved")


def check_format(module, folder: Path, kind: str, max_new: int) -> dict:
    """Export ``folder`` as a ``kind`` GGUF and compare llama.cpp with personachat's fp32."""
    from personachat import ConvAIModel
    from personachat.model.export import export_folder

    out = folder.parent / f"export-{kind}"
    export_folder(folder, out, gguf_format=kind, overwrite=True)
    args = {"do_sample": False, "max_length": max_new, "cpu_bf16": False, "silent": True}
    ours = ConvAIModel("auto", out, use_cuda=False, args=args)
    engine = LlamaCpp(module, out / f"{out.name}.gguf")
    same_tokens = same_replies = 0
    seconds = 0.0
    try:
        for message, history in TALKS:
            expected, _ = ours.interact_single(message, history, personality=PERSONA)
            messages = [{"role": "system", "content": "\n".join(PERSONA)}]
            for i, text in enumerate([*history, message]):
                role = "user" if (len(history) - i) % 2 == 0 else "assistant"
                messages.append({"role": role, "content": text})
            text = ours.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            ids = ours.tokenizer(text, add_special_tokens=False)["input_ids"]
            theirs = engine.tokenize(text)
            same_tokens += theirs == ids
            reply, took = engine.greedy(theirs, max_new)
            seconds += took
            got = ours.tokenizer.decode(reply, skip_special_tokens=True).strip()
            same_replies += got == expected
            if got != expected:
                print(f"  {kind}: {message!r}: llama.cpp {got!r} / personachat {expected!r}")
    finally:
        engine.close()
    size = (out / f"{out.name}.gguf").stat().st_size
    return {
        "kind": kind,
        "tokens": same_tokens,
        "replies": same_replies,
        "bytes": size,
        "llamacpp_s": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a personachat model folder or name (default: tiny)")
    parser.add_argument("--formats", default="f32,f16,q8_0")
    parser.add_argument("--max-new", type=int, default=40)
    options = parser.parse_args(argv)
    module = load_llamacpp()
    if module is None:
        print(f"llama.cpp not found: pip install --no-deps llama-cpp-cffi==0.4.42 or set {ENV}")
        return 2
    work = Path(tempfile.mkdtemp(prefix="llamacpp-export-"))
    folder = Path(options.model) if options.model else tiny_model(work)
    if options.model and not folder.is_dir():  # a name such as smollm2: save it first
        from personachat import ConvAIModel

        folder = ConvAIModel("auto", options.model, use_cuda=False).save_model(work / "saved")
    rows = [check_format(module, folder, k, options.max_new) for k in options.formats.split(",")]
    print(f"\n{folder}: {len(TALKS)} talks, greedy, up to {options.max_new} new tokens")
    print("| GGUF | file kB | llama.cpp ids = personachat's | greedy reply = personachat fp32 |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['kind']} | {row['bytes'] / 1e3:,.0f} | {row['tokens']}/{len(TALKS)} "
            f"| {row['replies']}/{len(TALKS)} |"
        )
    return 0 if all(r["tokens"] == r["replies"] == len(TALKS) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

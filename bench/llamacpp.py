"""llama.cpp (`llama-cpp-python`) single-stream greedy decode on a GGUF file; prints one JSON line.

    /work/bench-venv/bin/python bench/llamacpp.py --gguf FILE --prompt-ids '[1, 2, 3]' --new-tokens 32 --threads 1,2

Runs in a bench-only virtual environment (llama-cpp-python builds from source for ~25 minutes and never enters
the project's install): `bench/serving.py` calls it as a subprocess with the interpreter named by
`--llamacpp-python` or `$GLOBAI_LLAMACPP_PYTHON`. Imports nothing from the project.

Same prompt ids as the pipeline, greedy (argmax of the last logits row), `n_ubatch=1`: on this CPU (AVX-512,
AMX) batched evaluation crashes in libggml-cpu.so (TOOLCHAIN.md). Decode tokens/s = (N - 1) / the time of the
N - 1 single-token evaluations after the prompt (the first token comes from the prompt's logits), as the
pipeline's figure is counted; best of `--repeats` per thread count.
"""

from __future__ import annotations

import argparse
import json
import time


def decode(llm, prompt: list[int], new_tokens: int) -> tuple[float, list[int]]:  # type: ignore[no-untyped-def]
    import numpy as np

    def argmax() -> int:  # the last evaluated token's logits (llama.cpp keeps only those without logits_all)
        return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))))

    llm.reset()
    llm.eval(prompt)
    tokens = [argmax()]
    started = time.perf_counter()
    for _ in range(new_tokens - 1):
        llm.eval([tokens[-1]])
        tokens.append(argmax())
    return (new_tokens - 1) / (time.perf_counter() - started), tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--prompt-ids", required=True, help="JSON list of token ids")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from llama_cpp import Llama

    prompt = [int(t) for t in json.loads(args.prompt_ids)]
    result: dict[str, object] = {}
    for threads in (int(t) for t in args.threads.split(",")):
        llm = Llama(
            model_path=args.gguf,
            n_ctx=max(256, len(prompt) + args.new_tokens + 8),
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=8,
            n_ubatch=1,
            verbose=False,
        )
        decode(llm, prompt, 4)  # warm-up
        runs = [decode(llm, prompt, args.new_tokens) for _ in range(args.repeats)]
        result[f"decode_tok_s_{threads}"] = max(r[0] for r in runs)
        result["tokens"] = runs[0][1]
        del llm
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

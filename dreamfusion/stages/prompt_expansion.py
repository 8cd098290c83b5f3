"""prompt-expansion stage: validate a prompt, build its view prompts, encode them once.

    python -m dreamfusion.stages.prompt_expansion --output DIR [GROUP=OPTION ...] [key=value ...]
    python -m dreamfusion.stages.prompt_expansion --expand "a {red|blue} {cube|sphere}"

Uses the same config as nerf-sds (model.prompt, model.negative_prompt, the view suffixes,
guidance=...). A prompt longer than the text encoder takes is an error unless --truncate,
which reports what was cut. Writes DIR/prompts.json and DIR/embeddings.safetensors.

``model.guidance.model_key=s3://BUCKET/models/<id>`` reads a model mirrored in the object store
(``dreamfusion.stages.mirror_model``) from --store-endpoint, through a verified local cache
(``$DREAMFUSION_CACHE``); the prompt set records the s3:// key itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dreamfusion.errors import UserError
from dreamfusion.stages import cli


def main(argv: list[str]) -> int:
    p = cli.ArgumentParser(prog="python -m dreamfusion.stages.prompt_expansion", description=__doc__)
    p.add_argument("--output", type=Path, help="folder for prompts.json and embeddings.safetensors")
    p.add_argument("--expand", metavar="TEMPLATE", help="print the prompts a template names, as JSON, and exit")
    p.add_argument("--truncate", action="store_true", help="cut over-long prompts (reported) instead of failing")
    p.add_argument("--config", type=Path, help="YAML config in the seed's layout (applied first)")
    p.add_argument("--preset", action="append", help="named override set applied first")
    p.add_argument("--store-endpoint", help="S3/MinIO endpoint of an s3:// model key, host:port or http(s)://host:port")
    p.add_argument(
        "--store-secure",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="TLS for --store-endpoint (default: from the endpoint's scheme, else off)",
    )
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    if args.output is not None:
        cli.output_folder(args.output)
    if args.expand is not None:
        from dreamfusion.data.templates import expand_template

        print(json.dumps(expand_template(args.expand)))
        return 0
    if args.output is None:
        raise UserError("--output is required (or --expand TEMPLATE)")

    from dreamfusion import registry
    from dreamfusion.config import compose
    from dreamfusion.config.files import compose_with_file
    from dreamfusion.config.presets import expand
    from dreamfusion.data.prompt_set import PromptSet
    from dreamfusion.data.prompts import check_tokens, view_prompts
    from dreamfusion.guidance.stable_diffusion import use_local_copy
    from dreamfusion.store.models import fetch_model_url, is_model_url, parse_model_url

    cfg = compose(compose_with_file(args.config, expand(args.preset) + args.overrides))
    m = cfg.model
    if is_model_url(m.guidance.model_key):
        parse_model_url(m.guidance.model_key)  # a malformed key or a missing endpoint fails before any download
        if not args.store_endpoint:
            raise UserError(f"model.guidance.model_key={m.guidance.model_key} needs --store-endpoint")
        folder = fetch_model_url(m.guidance.model_key, args.store_endpoint, args.store_secure)
        use_local_copy(m.guidance.model_key, folder)  # the guidance reads it; the prompt set keeps the key
    cli.quiet_libraries()
    # The tokenizer and text encoder only: the UNet and VAE are the GPU stages' (this pod is a small CPU one).
    encoder = registry.find("guidance", m.defaults["guidance"]).load_text_encoder(m.guidance, "cpu")
    texts = {**view_prompts(m), "negative": m.negative_prompt}
    for note in check_tokens(encoder.tokenizer, texts, truncate=args.truncate):
        print(f"prompt-expansion: {note}", file=sys.stderr)
    emb = encoder.encode_text(list(texts.values()))
    prompt_set = PromptSet(
        prompt=m.prompt,
        negative_prompt=m.negative_prompt,
        views={k: v for k, v in texts.items() if k != "negative"},
        model_key=m.guidance.model_key,
        embeddings={k: emb[i : i + 1].contiguous() for i, k in enumerate(texts)},
    )
    prompt_set.save(args.output)
    print(f"prompt-expansion: {len(texts)} prompts encoded ({tuple(emb.shape[1:])} each) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))

"""The ``safenet`` command: data, train, finetune, eval, compile, info, plot, serve, infer,
bench, cost, approximate, demo.

Models are named by checkpoint path or by the built-in names ``default`` (ResNet-20 on
Fashion-MNIST) and ``default-approx`` (its SAFENet-approximated variant).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from safenet.data import DatasetError

if TYPE_CHECKING:
    from torch import nn

    from safenet.field import Field
    from safenet.nn.surgery import LayerSpec
    from safenet.plan.ir import Plan

# Layout: each command has a ``_parser_<command>`` (its options; those that set a config
# dataclass's fields come from the fields, :func:`_add_config`) and a thin ``cmd_<command>``
# (call the library, print). The module docstring is ``safenet --help``'s description.

#: the settings each command reads from its config dataclass, in the order of its --help
_TRAIN = ("arch", "dataset", "epochs", "batch_size", "lr", "weight_decay", "width", "seed",
          "limit", "eval_limit", "device")  # fmt: skip
_FINETUNE = ("epochs", "batch_size", "lr", "temperature", "kd_weight", "blend_epochs", "clip",
             "range_weight", "harden_rounds", "seed", "limit", "eval_limit", "device")  # fmt: skip
_SEARCH = ("method", "population", "generations_per_level", "steps", "max_drop",
           "min_accuracy", "latency_budget", "eval_images", "wrap_images", "max_failure_rate",
           "failure_weight",
           "time_budget_s", "epoch_budget", "seed")  # fmt: skip


def _add_config(
    p: argparse._ActionsContainer,
    cls: type,
    names: Iterable[str],
    flags: Mapping[str, str] | None = None,
) -> None:
    """One ``--flag`` per field of config dataclass ``cls`` named in ``names``: default, help
    and choices from the field (:func:`safenet.options.option`), type from its annotation;
    ``flags`` names a flag other than the field's name with dashes. The value lands in
    ``args.<field name>``."""
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        f, flag = by_name[name], (flags or {}).get(name, "--" + name.replace("_", "-"))
        kw: dict[str, Any] = {"dest": name, "default": f.default, "help": f.metadata.get("help")}
        if "choices" in f.metadata:
            kw["choices"] = list(f.metadata["choices"])
        else:
            kw["metavar"] = flag.lstrip("-").replace("-", "_").upper()
        kind = next((a for a in typing.get_args(hints[name]) if a is not type(None)), hints[name])
        if kind is not str:
            kw["type"] = kind
        p.add_argument(flag, **kw)


def _config(cls: Callable[..., Any], args: argparse.Namespace, names: Iterable[str]) -> Any:
    """``cls`` built from the parsed values of its fields ``names`` (see :func:`_add_config`)."""
    return cls(**{n: getattr(args, n) for n in names})


def _defaults(func: Callable[..., Any]) -> dict[str, Any]:
    """The keyword defaults of ``func`` (library functions are their flags' source too)."""
    return {k: v.default for k, v in inspect.signature(func).parameters.items()
            if v.default is not inspect.Parameter.empty}  # fmt: skip


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="dataset folder (default: $SAFENET_DATA_DIR or ~/.cache/safenet/data)",
    )


def cmd_data(args: argparse.Namespace) -> int:
    from safenet.data import default_data_dir, fetch

    fetch(args.name, args.data_dir or default_data_dir())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from safenet.training import TrainConfig, train

    cfg = _config(TrainConfig, args, _TRAIN)
    ck = train(cfg, args.out, args.data_dir, resume=args.resume)
    print(json.dumps({"checkpoint": str(args.out), **ck.metrics}))
    return 0


def _specs(args: argparse.Namespace) -> LayerSpec | dict[str, LayerSpec]:
    from safenet.nn.surgery import LayerSpec

    if args.layers is None:
        return LayerSpec(args.ratio, args.degree)
    try:
        raw = json.loads(
            Path(args.layers).read_text() if Path(args.layers).is_file() else args.layers
        )
        return {
            k: LayerSpec(float(v["ratio"]), int(v.get("degree", args.degree)))
            for k, v in raw.items()
        }
    except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(
            f'--layers must be JSON like {{"relu": {{"ratio": 0.5, "degree": 2}}}}: {e}'
        ) from e


def cmd_finetune(args: argparse.Namespace) -> int:
    from safenet import checkpoint
    from safenet.approx.finetune import FinetuneConfig, finetune_checkpoint
    from safenet.evaluate import secure_check

    cfg = _config(FinetuneConfig, args, _FINETUNE)
    parent = checkpoint.load(args.model)
    ck = finetune_checkpoint(
        parent,
        str(args.model),
        _specs(args),
        cfg,
        args.out,
        args.criterion,
        args.per_channel,
        args.data_dir,
    )
    check, warning = secure_check(args.out, args.data_dir)
    if warning:
        print(warning, file=sys.stderr)
    print(json.dumps({"checkpoint": str(args.out), **ck.metrics, **check}))
    return 0


def _field(args: argparse.Namespace, model: nn.Module) -> Field:
    """The Field from the command line; the prime defaults per model (see default_field)."""
    from safenet.plan.compiler import default_field

    return default_field(
        model,
        p=args.prime,
        frac_bits=args.frac_bits,
        weight_bits=args.weight_bits,
        coef_bits=args.coef_bits,
        poly_frac_bits=args.poly_frac_bits,
    )


def _add_field(p: argparse.ArgumentParser) -> None:
    from safenet.field import Field

    d = Field()
    g = p.add_argument_group("field and fixed point")
    g.add_argument(
        "--prime",
        type=int,
        default=None,
        help="field prime p (default: 2^41-2^37+1 for all-ReLU models, 2^48-2^44+1 with "
        "polynomial channels)",
    )
    g.add_argument("--frac-bits", type=int, default=d.frac_bits)
    g.add_argument("--weight-bits", type=int, default=d.weight_bits)
    g.add_argument("--coef-bits", type=int, default=d.coef_bits)
    g.add_argument(
        "--poly-frac-bits",
        type=int,
        default=None,
        help="fractional bits of polynomial inputs (default: per model, see default_field)",
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from safenet import checkpoint
    from safenet.evaluate import evaluate_model

    report = evaluate_model(
        args.model,
        args.dataset,
        args.split,
        args.limit,
        args.data_dir,
        _field(args, checkpoint.load(args.model).build()),
        progress=not args.json,
    )
    if args.json:
        print(json.dumps(report))
    else:
        for k in (
            "model",
            "dataset",
            "split",
            "images",
            "accuracy",
            "accuracy_fixed_point",
            "agreement",
            "max_logit_error",
            "relu_count",
            "poly_count",
            "overflows",
            "headroom_bits",
            "expected_wraps_per_inference",
            "secure_failure_rate",
            "leak_bound_per_inference",
        ):
            print(f"{k:28s} {report[k]}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from safenet import checkpoint
    from safenet.plan import compile_model

    ck = checkpoint.load(args.model)
    model = ck.build()
    plan = compile_model(model, ck.input_shape, _field(args, model))
    plan.info |= ck.plan_info() | {"model": str(args.model)}
    if args.out is not None:
        fp = plan.save(args.out)
        print(f"wrote {args.out} (fingerprint {fp})")
    print(plan.summary())
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from safenet import checkpoint

    ck = checkpoint.load(args.model)
    out = {
        "arch": ck.arch,
        "arch_kwargs": ck.arch_kwargs,
        "dataset": ck.dataset,
        "metrics": ck.metrics,
        "parent": ck.parent,
        "epochs": len(ck.history),
    }
    if ck.activation is not None:
        out["layers"] = {
            n: {"channels": c["channels"], "relu": sum(c["relu_mask"]), "degree": c["degree"]}
            for n, c in ck.activation.items()
        }
    print(json.dumps(out, indent=None if args.json else 1))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from safenet import checkpoint
    from safenet.plots import plot_checkpoint

    print(f"wrote {plot_checkpoint(checkpoint.load(args.model), args.out)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from safenet.demo import run_demo
    from safenet.secure import SecureRunError

    try:
        run_demo(args.images, args.data_dir, progress=not args.no_progress)
    except SecureRunError as e:  # the server process failed: its message, not our traceback
        print(f"safenet: error: {e}", file=sys.stderr)
        return 3
    return 0


def _shape(text: str) -> tuple[int, int, int]:
    """``--input-shape C,H,W`` -> a tuple, with a clear error."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3:
        raise ValueError(f"--input-shape must be C,H,W, got {text!r}")
    return shape


def _plan_for(model_name: str) -> Plan:
    """Load a checkpoint (path or built-in name) and compile it with its default field."""
    from safenet import checkpoint

    plan = checkpoint.load(model_name).plan()
    plan.info["model"] = str(model_name)
    return plan


def _tls(args: argparse.Namespace, server: bool) -> object:
    """The TLSConfig the --tls-* flags ask for, None for plaintext (no TLS flag at all).

    Fails closed: a flag given without what it needs is a ValueError, never plaintext.
    """
    from safenet.channel import TLSConfig

    mutual = server and args.require_client_cert
    if mutual and not (args.tls_cert and args.tls_ca):
        raise ValueError("--require-client-cert needs --tls-cert and --tls-ca (the clients' CA)")
    if args.tls_key and not args.tls_cert:
        raise ValueError("--tls-key needs --tls-cert (the certificate of that key)")
    if server and args.tls_ca and not args.tls_cert:
        raise ValueError("--tls-ca needs --tls-cert on the server (a TLS server needs a cert)")
    if not (args.tls_cert or args.tls_ca):
        return None
    return TLSConfig(
        certfile=args.tls_cert, keyfile=args.tls_key, cafile=args.tls_ca, require_client_cert=mutual
    )


def _add_tls(p: argparse.ArgumentParser, server: bool) -> None:
    """--tls-cert/--tls-key/--tls-ca (and, on a server, --require-client-cert)."""
    g = p.add_argument_group("TLS (optional; a flag without what it needs is an error)")
    g.add_argument("--tls-cert", type=Path, help="certificate (PEM) of this end")
    g.add_argument("--tls-key", type=Path, help="private key (PEM) of --tls-cert")
    peer = "client certificates (checked when one is sent)" if server else "the server"
    g.add_argument("--tls-ca", type=Path, help=f"CA certificate(s) to verify {peer} with")
    if server:
        g.add_argument(
            "--require-client-cert",
            action="store_true",
            help="mutual TLS: clients need a cert from --tls-ca (needs --tls-cert, --tls-ca)",
        )


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from safenet.protocol.engine import model_version
    from safenet.secure import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    tls = _tls(args, server=True)  # a bad TLS flag fails before the model loads
    plan = _plan_for(args.model)
    counts = plan.counts()

    def ready(port: int) -> None:
        print(
            f"safenet serve: {args.model} on {args.host}:{port} "
            f"({counts['relu_count']} ReLUs, {counts['poly_count']} polynomial activations, "
            f"public plan {plan.public().fingerprint()[:16]}, "
            f"model version {model_version(plan)})",
            flush=True,
        )

    serve(
        plan,
        args.host,
        args.port,
        tls=tls,  # type: ignore[arg-type]
        max_sessions=args.max_sessions,
        on_ready=ready,
        concurrency=args.concurrency,
        bank=args.bank,
        session_memory=None if args.session_memory is None else int(args.session_memory * 2**30),
    )
    return 0


def _infer_input(args: argparse.Namespace) -> tuple[np.ndarray, int | None]:
    """The client's input (normalised float, (C, H, W)) and its label if known."""
    if args.input is not None:
        try:
            x = np.load(args.input, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read {args.input} as a .npy array: {e}") from e
        if x.ndim == 4 and x.shape[0] == 1:
            x = x[0]
        return x.astype(np.float64), None
    from safenet.data.torchdata import ImageDataset

    ds = ImageDataset(args.dataset, args.split, args.data_dir)
    if not 0 <= args.index < len(ds):
        raise ValueError(f"--index {args.index} outside the {len(ds)} images of {args.dataset}")
    x = ds.normalize(ds.images[args.index : args.index + 1])[0].double().numpy()
    return x, int(ds.labels[args.index])


def _infer_image(args: argparse.Namespace, host: str, port: int) -> int:
    from safenet.secure import infer_image, phase_bytes

    out = infer_image(host, port, args.image, top_k=args.top_k, bank=args.bank,
                      tls=_tls(args, server=False))  # type: ignore[arg-type]  # fmt: skip
    rep = out.pop("report")
    out |= {"online_s": rep["phase_s"].get("online"),
            "online_bytes": phase_bytes(rep["traffic"], "online"),
            "mode": rep.get("mode", "full"), "model_version": rep.get("model_version")}  # fmt: skip
    if args.json:
        print(json.dumps(out | {"report": rep}))
        return 0
    print(f"{args.image}: private inference ({out['mode']}, online {out['online_s']:.2f} s)")
    for t in out["top"]:
        print(f"  {t['score']:7.2%}  {t['name']}")
    return 0


def _server_address(server: str) -> tuple[str, str]:
    """``--server HOST:PORT`` as (host, port digits); an empty host means loopback."""
    host, sep, port = server.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--server must be HOST:PORT, got {server!r}")
    return host or "127.0.0.1", port


def _infer_preprocess(args: argparse.Namespace, host: str, port: str) -> int:
    """``infer --preprocess K``: run K offline sessions into ``--bank``; print the bank size."""
    from tqdm import tqdm

    from safenet.secure import preprocess

    if args.bank is None:
        raise ValueError("--preprocess needs --bank DIR (where the sessions are kept)")
    with tqdm(total=args.preprocess, desc="offline sessions", disable=args.json) as bar:
        rep = preprocess(
            host, int(port), args.preprocess, args.bank,
            tls=_tls(args, server=False),  # type: ignore[arg-type]
            progress=lambda done, _total: bar.update(done - bar.n),
        )  # fmt: skip
    print(json.dumps({k: rep[k] for k in ("banked", "model_version", "total_s")}))
    return 0


def _infer_summary(y: np.ndarray, rep: dict[str, Any], label: int | None) -> dict[str, Any]:
    """The figures ``infer`` prints: prediction, label, logits, times and bytes per phase."""
    from safenet.secure import phase_bytes

    traffic = rep["traffic"]
    return {
        "prediction": int(np.argmax(y)),
        "label": label,
        "logits": [round(float(v), 4) for v in y.reshape(-1)],
        "offline_s": rep["phase_s"].get("offline"),
        "online_s": rep["phase_s"].get("online"),
        "offline_bytes": phase_bytes(traffic, "offline"),
        "online_bytes": phase_bytes(traffic, "online"),
        "mode": rep.get("mode", "full"),
        "model_version": rep.get("model_version"),
    }


def _print_infer(out: dict[str, Any], rep: dict[str, Any], as_json: bool) -> None:
    """``out`` as one JSON line with the full report, or one ``name value`` line each."""
    if as_json:
        print(json.dumps(out | {"report": rep}))
    else:
        for k, v in out.items():
            print(f"{k:14s} {v}")


def cmd_infer(args: argparse.Namespace) -> int:
    from safenet.secure import infer

    host, port = _server_address(args.server)
    if args.preprocess:
        return _infer_preprocess(args, host, port)
    if args.image is not None:
        return _infer_image(args, host, int(port))
    if args.input is None and args.dataset is None:
        raise ValueError("give --image FILE, --input FILE or --dataset NAME (or --preprocess K)")
    x, label = _infer_input(args)
    y, rep = infer(
        host, int(port), x,
        tls=_tls(args, server=False),  # type: ignore[arg-type]
        bank=args.bank,
    )  # fmt: skip
    _print_infer(_infer_summary(y, rep, label), rep, args.json)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from safenet.checkpoint import import_model

    try:
        kwargs = json.loads(args.kwargs) if args.kwargs else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"--kwargs is not JSON: {e}") from None
    if not isinstance(kwargs, dict):
        raise ValueError("--kwargs must be a JSON object, e.g. '{\"num_classes\": 10}'")
    shape = _shape(args.input_shape) if args.input_shape else None
    ck = import_model(args.model_def, args.weights, args.dataset, shape, kwargs)
    ck.save(args.out)
    params = sum(v.numel() for v in ck.state_dict.values())
    print(f"wrote {args.out}: {ck.arch} {kwargs or ''} with {params:,} weights, input "
          f"{ck.input_shape}, {ck.data['channels'] if ck.data else '?'}-channel pictures "
          f"of {ck.dataset}")  # fmt: skip
    print(f"next: safenet eval --model {args.out}   (or compile, approximate, serve, bench)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from safenet.benchmark import run_bench

    if args.calibrate:
        from safenet.approx.cost import calibrate, default_calibration_path

        cal = calibrate(progress=not args.json)
        path = cal.save(args.out or default_calibration_path())
        if args.json:
            print(json.dumps({"calibration": str(path)} | cal.__dict__, default=str))
        else:
            print(f"wrote {path}")
        return 0

    if args.model is not None:
        from safenet.benchmark import bench_plan

        rep = {"arch": str(args.model)} | bench_plan(_plan_for(args.model), seed=args.seed)
        _print_bench(rep, args.json)
        return 0
    shape = _shape(args.input_shape)
    rep = run_bench(
        args.arch,
        shape,
        relu_ratio=args.relu_ratio,
        degree=args.degree,
        num_classes=args.classes,
        width=args.width,
        seed=args.seed,
    )
    _print_bench(rep, args.json)
    return 0


def _print_bench(rep: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rep))
        return
    keys = ("arch", "relu_count", "poly_count", "maxpool_outputs", "offline_s", "online_s",
            "offline_bytes", "online_bytes", "online_rounds", "gc_bytes_per_relu",
            "online_bytes_per_relu", "peak_rss_mib", "matches_reference",
            "max_abs_error_ulp", "gc_aes")  # fmt: skip
    for k in keys:
        print(f"{k:22s} {rep[k]}")


def _calibration(path: Path | None):  # noqa: ANN202 (lazy import of the return type)
    """The calibration file given, else this machine's (``safenet bench --calibrate``), else
    the nominal one (measured on the reference VM; a note says so)."""
    from safenet.approx.cost import Calibration, default_calibration_path

    if path is not None:
        return Calibration.load(path)
    path = default_calibration_path()
    if path.exists():
        return Calibration.load(path)
    print(f"note: no calibration at {path}; using nominal unit costs "
          "(run 'safenet bench --calibrate' for this machine's)", file=sys.stderr)  # fmt: skip
    return Calibration.nominal()


def cmd_cost(args: argparse.Namespace) -> int:
    from safenet.approx.cost import (
        NETWORKS,
        Network,
        predict,
    )

    cal = _calibration(args.calibration)
    if args.model is not None:
        plan = _plan_for(args.model)
    else:
        from safenet.benchmark import random_plan

        plan = random_plan(args.arch, _shape(args.input_shape), args.relu_ratio, args.degree)
    net = cal.local if args.network == "local" else NETWORKS[args.network]
    if args.bandwidth is not None or args.rtt is not None:
        net = Network(
            net.bandwidth if args.bandwidth is None else args.bandwidth * 1e6 / 8,
            net.rtt if args.rtt is None else args.rtt / 1e3,
            "custom",
        )
    out = predict(plan, cal, net)
    if args.json:
        print(json.dumps(out))
    else:
        for k in ("relu_count", "poly_count", "offline_s", "online_s", "offline_bytes",
                  "online_bytes", "online_rounds", "online_parts_s"):  # fmt: skip
            print(f"{k:16s} {out[k]}")
    return 0


def cmd_approximate(args: argparse.Namespace) -> int:
    from safenet import checkpoint
    from safenet.approx.approximate import approximate_checkpoint, relu_teacher
    from safenet.approx.runners import make_runner
    from safenet.approx.search import SearchConfig

    parent = relu_teacher(checkpoint.load(args.model))
    cal = _calibration(args.calibration)
    cfg = _config(SearchConfig, args, _SEARCH)
    log = (lambda _m: None) if args.json else print
    with make_runner(args.runner, args.ray_address, args.cpus_per_trial) as runner:
        report = approximate_checkpoint(
            parent, str(args.model), cfg, args.out, cal, runner=runner, log=log,
            final_epochs=args.final_epochs, final_lr=args.final_lr, limit=args.limit,
            data_dir=args.data_dir,
        ).to_dict()  # fmt: skip
    keys = ("method", "accuracy", "teacher_accuracy", "predicted_online_s", "teacher_online_s",
            "failure_rate", "feasible", "complete", "test_accuracy", "teacher_test_accuracy",
            "final_failure_rate", "final_float_failures", "checkpoint")  # fmt: skip
    print(json.dumps({k: report[k] for k in keys if k in report}))
    return 0


def _parser_data(sub: Any) -> None:
    p = sub.add_parser("data", help="datasets")
    dsub = p.add_subparsers(dest="action", required=True)
    f = dsub.add_parser("fetch", help="get a dataset (system copy, registry, official source)")
    f.add_argument("name", choices=["fashion-mnist", "mnist", "cifar10", "cifar100"])
    _add_data_dir(f)
    f.set_defaults(func=cmd_data)


def _parser_train(sub: Any) -> None:
    from safenet.training import TrainConfig

    p = sub.add_parser("train", help="train a zoo model from scratch")
    _add_config(p, TrainConfig, _TRAIN)
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    p.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    _add_data_dir(p)
    p.set_defaults(func=cmd_train)


def _parser_import(sub: Any) -> None:
    p = sub.add_parser(
        "import", help="your own model: a Python file's builder and a state dict -> checkpoint"
    )
    p.add_argument("--model-def", required=True,
                   help="path/to/file.py:function returning the nn.Module")  # fmt: skip
    p.add_argument("--weights", type=Path, default=None,
                   help="state dict from torch.save(model.state_dict(), path) "
                   "(default: the function's initial weights)")  # fmt: skip
    p.add_argument("--dataset", required=True,
                   help="what it was trained on: a dataset name or folder:PATH[:SIZE]")  # fmt: skip
    p.add_argument(
        "--input-shape", default=None,
        help="C,H,W, checked against the dataset's pictures (resize a folder with :SIZE)",
    )  # fmt: skip
    p.add_argument("--kwargs", default=None, help="JSON keyword arguments for the function")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    p.set_defaults(func=cmd_import)


def _parser_finetune(sub: Any) -> None:
    from safenet.approx.finetune import FinetuneConfig, finetune_checkpoint
    from safenet.approx.scoring import CRITERIA

    p = sub.add_parser("finetune", help="approximate a ReLU model (channel-wise) and fine-tune")
    p.add_argument("--model", required=True, help="ReLU checkpoint path or 'default'")
    p.add_argument("--ratio", type=float, default=0.5,
                   help="fraction of channels per layer replaced by polynomials")  # fmt: skip
    p.add_argument("--degree", type=int, default=2, choices=[2, 3])
    p.add_argument(
        "--layers", default=None, help="per-layer JSON (string or file): {name: {ratio, degree}}"
    )
    p.add_argument("--criterion", default=_defaults(finetune_checkpoint)["criterion"],
                   choices=list(CRITERIA), help="which channels stay ReLU")  # fmt: skip
    p.add_argument("--per-channel", action="store_true", help="coefficients per channel")
    _add_config(p, FinetuneConfig, _FINETUNE)
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    _add_data_dir(p)
    p.set_defaults(func=cmd_finetune)


def _parser_harden(sub: Any) -> None:
    from safenet.approx.harden import HardenConfig

    p = sub.add_parser("harden", help="fine-tune an approximated model until no training "
                       "image blows it up (range hardening)")  # fmt: skip
    p.add_argument("--model", required=True, help="approximated checkpoint (its parent: ReLU)")
    _add_config(p, HardenConfig, ("rounds", "steps", "range_weight"))
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    _add_data_dir(p)
    p.set_defaults(func=cmd_harden)


def cmd_harden(args: argparse.Namespace) -> int:
    from safenet.approx.harden import HardenConfig, harden_checkpoint

    cfg = _config(HardenConfig, args, ("rounds", "steps", "range_weight"))
    ck = harden_checkpoint(args.model, args.out, cfg, args.data_dir)
    print(json.dumps({"checkpoint": str(args.out), "accuracy": ck.metrics["accuracy"],
                      "hardening": ck.metrics["hardening"]}))  # fmt: skip
    return 0


def _parser_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="float vs fixed-point accuracy and agreement")
    p.add_argument("--model", default="default")
    p.add_argument("--dataset", default=None, help="default: the model's own dataset")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--limit", type=int, default=None, help="first N images only")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_field(p)
    _add_data_dir(p)
    p.set_defaults(func=cmd_eval)


def _parser_compile(sub: Any) -> None:
    p = sub.add_parser("compile", help="lower a model to a Plan and show it")
    p.add_argument("--model", default="default")
    p.add_argument("--out", type=Path, default=None, help="save the plan here")
    _add_field(p)
    p.set_defaults(func=cmd_compile)


def _parser_info_plot(sub: Any) -> None:
    p = sub.add_parser("info", help="what a checkpoint holds")
    p.add_argument("--model", default="default")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("plot", help="PNG of a checkpoint's training curve and layers")
    p.add_argument("--model", default="default")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_plot)


def _parser_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve private inferences of a model")
    p.add_argument("--model", default="default-approx", help="checkpoint path or built-in name")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7878)
    p.add_argument("--max-sessions", type=int, default=None, help="stop after N clients")
    p.add_argument(
        "--concurrency", type=int, default=2, help="clients served at once (one process each)"
    )
    p.add_argument("--bank", type=Path, default=None, help="folder of the preprocessing bank")
    p.add_argument(
        "--session-memory", type=float, default=None,
        help="GiB each forked session may allocate (default: 1 + 1.25x the model's garbled "
        "tables; 0: no cap)",
    )  # fmt: skip
    _add_tls(p, server=True)
    p.set_defaults(func=cmd_serve)


def _parser_infer(sub: Any) -> None:
    p = sub.add_parser("infer", help="one private inference against a server")
    p.add_argument("--server", required=True, help="HOST:PORT")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--input", type=Path, help=".npy array, normalised, in the model's shape")
    src.add_argument("--dataset", help="take the image from a dataset (with --index)")
    src.add_argument(
        "--image", type=Path, help="a picture (PNG, JPEG, ...), prepared as the model was trained"
    )
    p.add_argument("--top-k", type=int, default=5, help="classes shown with --image")
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--split", default="test")
    p.add_argument("--json", action="store_true")
    p.add_argument("--bank", type=Path, default=None, help="preprocessing bank folder")
    p.add_argument(
        "--preprocess", type=int, default=0, help="run K offline phases into --bank and stop"
    )
    _add_data_dir(p)
    _add_tls(p, server=False)
    p.set_defaults(func=cmd_infer)


def _parser_bench(sub: Any) -> None:
    p = sub.add_parser("bench", help="measure one secure inference (random weights)")
    p.add_argument("--arch", default="resnet32")
    p.add_argument(
        "--model", default=None, help="measure this checkpoint instead of --arch (its weights)"
    )
    p.add_argument("--input-shape", default="3,32,32", help="C,H,W")
    p.add_argument("--relu-ratio", type=float, default=1.0, help="channels kept as ReLU")
    p.add_argument("--degree", type=int, default=2, choices=[2, 3])
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--calibrate", action="store_true",
        help="measure the per-unit costs of the cost model instead (writes a calibration file)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="calibration file to write")
    p.set_defaults(func=cmd_bench)


def _parser_approximate(sub: Any) -> None:
    from safenet.approx.approximate import approximate_checkpoint
    from safenet.approx.search import SearchConfig

    job = _defaults(approximate_checkpoint)
    p = sub.add_parser("approximate", help="search per-layer ReLU ratios/degrees (BTPBT)")
    p.add_argument("--model", default="default", help="the ReLU teacher checkpoint")
    p.add_argument("--out", type=Path, required=True, help="folder: search.pt, best.pt, report")
    _add_config(p, SearchConfig, _SEARCH, {"time_budget_s": "--time-budget"})
    p.add_argument("--final-epochs", type=int, default=job["final_epochs"],
                   help="fine-tune epochs for the winner (0: none)")  # fmt: skip
    p.add_argument("--final-lr", type=float, default=job["final_lr"],
                   help="learning rate of the winner's fine-tune")  # fmt: skip
    p.add_argument("--limit", type=int, default=job["limit"], help="training images to use")
    p.add_argument("--calibration", type=Path, default=None,
                   help="unit costs (default: this machine's, else nominal)")  # fmt: skip
    p.add_argument(
        "--runner", default="auto", choices=["auto", "sequential", "ray"],
        help="where a generation's trials run: ray = parallel Ray Tune trials "
        "(pip install 'safenet[ray]'); auto = ray when installed, else sequential",
    )  # fmt: skip
    p.add_argument(
        "--ray-address", default=None, help="Ray cluster to join (default: start Ray locally)"
    )
    p.add_argument("--cpus-per-trial", type=int, default=1, help="CPUs (torch threads) per trial")
    p.add_argument("--json", action="store_true")
    _add_data_dir(p)
    p.set_defaults(func=cmd_approximate)


def _parser_cost(sub: Any) -> None:
    p = sub.add_parser("cost", help="predict a secure inference's latency and bytes")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="checkpoint path or built-in name")
    src.add_argument("--arch", help="zoo architecture with random weights (with --input-shape)")
    p.add_argument("--input-shape", default="3,32,32", help="C,H,W (with --arch)")
    p.add_argument("--relu-ratio", type=float, default=1.0, help="with --arch")
    p.add_argument("--degree", type=int, default=2, choices=[2, 3])
    p.add_argument("--network", default="local", choices=["local", "lan", "wan"])
    p.add_argument("--bandwidth", type=float, default=None, help="Mbit/s (overrides --network)")
    p.add_argument("--rtt", type=float, default=None, help="round-trip time in ms")
    p.add_argument("--calibration", type=Path, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cost)


def _parser_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="private inference of the built-in models, with costs")
    p.add_argument("--images", type=int, default=5, help="test images to classify privately")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_data_dir(p)
    p.set_defaults(func=cmd_demo)


#: the commands, in the order ``safenet --help`` lists them
_COMMANDS = (_parser_data, _parser_train, _parser_import, _parser_finetune, _parser_harden,
             _parser_eval,
             _parser_compile, _parser_info_plot, _parser_serve, _parser_infer, _parser_bench,
             _parser_approximate, _parser_cost, _parser_demo)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``safenet`` command (one ``_parser_<command>`` each)."""
    parser = argparse.ArgumentParser(prog="safenet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``safenet`` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (DatasetError, FileNotFoundError, ValueError, KeyError, OverflowError, ImportError) as e:
        print(f"safenet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("safenet: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # transport and protocol failures: one clear line, not a traceback
        from safenet.approx.finetune import FinetuneDiverged
        from safenet.approx.harden import UnsafeModelError
        from safenet.channel import TransportError
        from safenet.secure import OutputOutOfRange

        if isinstance(e, TransportError):
            print(f"safenet: error: {type(e).__name__}: {e}", file=sys.stderr)
            return 3
        if isinstance(e, FinetuneDiverged | UnsafeModelError | OutputOutOfRange):
            print(f"safenet: error: {e}", file=sys.stderr)
            return 4
        raise


if __name__ == "__main__":
    sys.exit(main())

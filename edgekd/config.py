"""Run configuration: YAML file + `--set key.sub=value` overrides, validated against the defaults and the value
rules below (the one place that says what a valid value is; train, `--set` and every config file pass here)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from edgekd.calibration import ThresholdRule
from edgekd.errors import EdgekdError

DEFAULTS: dict = {
    "model": "rd",
    "teacher": "efficientnet_lite0",
    "teacher_weights": None,  # explicit weights file; otherwise the offline wheel / torch hub cache
    "input_size": 256,
    "model_options": {},  # family-specific constructor arguments
    "scoring": {"combine": "add", "weights": None, "sigma": 4.0, "score": "max", "topk": 100, "eps": 1e-8,
                "map_stride": 2},
    "train": {
        "epochs": 30, "batch_size": 16, "optimizer": "adam", "lr": 0.005, "betas": [0.5, 0.999], "momentum": 0.9,
        "weight_decay": 0.0, "warmup_epochs": 0.0, "grad_clip": None,
        "augment": "none",  # none, or camera: codec, blur, noise and light drift (edgekd/data/augment.py)
        "val_fraction": 0.1, "seed": 0, "device": "auto", "amp": True, "feature_cache_gb": 4.0,
    },
    "threshold": ThresholdRule().as_config(),
}
_FREE_FORM = {"model_options"}  # validated by the model family itself


@dataclass(frozen=True)
class Rule:
    """What one config value may be: a kind, an inclusive/exclusive range, a set of choices, or None."""
    kind: str  # int, float, str, bool, floats (a list of floats)
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is not allowed (a learning rate of 0 trains nothing)
    high_open: bool = False
    choices: tuple[str, ...] = ()
    nullable: bool = False
    length: int | None = None  # floats: exact list length

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        what = {"int": "a whole number", "float": "a number", "str": "text", "bool": "true or false",
                "floats": f"a list of {self.length or ''} numbers".replace("  ", " ")}[self.kind]
        if self.low is not None and self.high is not None:
            what += f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            what += f" {'>' if self.low_open else '>='} {self.low:g}"
        return what + (" or null" if self.nullable else "")


RULES: dict[str, Rule] = {
    "model": Rule("str"),
    "teacher": Rule("str"),
    "teacher_weights": Rule("str", nullable=True),
    "scoring.combine": Rule("str", choices=("add", "mul", "max", "weighted")),
    "scoring.weights": Rule("floats", low=0, nullable=True),
    "scoring.sigma": Rule("float", 0, 64),
    "scoring.score": Rule("str", choices=("max", "topk")),
    "scoring.topk": Rule("int", 1, 1 << 24),
    "scoring.eps": Rule("float", 0, 1, low_open=True),
    "scoring.map_stride": Rule("int", 1, 32),  # and a power of two: edgekd/scoring.py MAP_STRIDES
    "train.epochs": Rule("int", 1, 100_000),
    "train.batch_size": Rule("int", 1, 4096),
    "train.optimizer": Rule("str", choices=("adam", "sgd")),
    "train.lr": Rule("float", 0, 10, low_open=True),
    "train.betas": Rule("floats", 0, 1, high_open=True, length=2),
    "train.momentum": Rule("float", 0, 1, high_open=True),
    "train.weight_decay": Rule("float", 0, 1),
    "train.warmup_epochs": Rule("float", 0, 100_000),
    "train.grad_clip": Rule("float", 0, 1e6, low_open=True, nullable=True),
    "train.augment": Rule("str", choices=("none", "camera", "camera_neutral")),
    "train.val_fraction": Rule("float", 0, 0.5),
    "train.seed": Rule("int", 0, 2**32 - 1),
    "train.device": Rule("str"),
    "train.amp": Rule("bool"),
    "train.feature_cache_gb": Rule("float", 0, 1024),
    "threshold.method": Rule("str", choices=("robust", "k_sigma")),
    "threshold.quantile": Rule("float", 0.5, 1),
    "threshold.margin": Rule("float", 0, 100),
}
INPUT_SIZE_STEP = 32  # every family downsamples by 32 and rebuilds each scale by doubling


def _as_number(key: str, value, rule: Rule):
    """YAML 1.1 (PyYAML) reads 1e-4 as text; a number written that way is still a number."""
    if isinstance(value, str) and rule.kind in ("int", "float"):
        try:
            value = float(value.strip())
        except ValueError:
            raise EdgekdError(f"config value {key}={value!r} is not a number: it must be {rule.describe()}") from None
    return value


def _check_number(key: str, value, rule: Rule):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EdgekdError(f"config value {key}={value!r} must be {rule.describe()}")
    if not math.isfinite(value):
        raise EdgekdError(f"config value {key}={value} is not finite: it must be {rule.describe()}")
    if rule.kind == "int":
        if float(value) != int(value):
            raise EdgekdError(f"config value {key}={value} must be {rule.describe()}")
        value = int(value)
    else:
        value = float(value)
    too_low = rule.low is not None and (value <= rule.low if rule.low_open else value < rule.low)
    too_high = rule.high is not None and (value >= rule.high if rule.high_open else value > rule.high)
    if too_low or too_high:
        raise EdgekdError(f"config value {key}={value:g} is out of range: it must be {rule.describe()}")
    return value


def check_value(key: str, value, rule: Rule):
    """The value, converted to its kind, or a one-line error naming the key, the value and what is allowed."""
    if value is None:
        if rule.nullable:
            return None
        raise EdgekdError(f"config value {key} is empty: it must be {rule.describe()}")
    if rule.kind == "bool":
        if not isinstance(value, bool):
            raise EdgekdError(f"config value {key}={value!r} must be true or false")
        return value
    if rule.kind == "str":
        if not isinstance(value, str) or not value.strip():
            raise EdgekdError(f"config value {key}={value!r} must be {rule.describe()}")
        if rule.choices and value not in rule.choices:
            raise EdgekdError(f"config value {key}={value!r} is unknown: it must be {rule.describe()}")
        return value
    if rule.kind == "floats":
        if not isinstance(value, (list, tuple)) or (rule.length and len(value) != rule.length) or not value:
            raise EdgekdError(f"config value {key}={value!r} must be {rule.describe()}")
        item = Rule("float", rule.low, rule.high, rule.low_open, rule.high_open)
        return [_check_number(key, _as_number(key, v, item), item) for v in value]
    return _check_number(key, _as_number(key, value, rule), rule)


def _check_input_size(value) -> int | list[int]:
    sides = value if isinstance(value, (list, tuple)) else [value]
    rule = Rule("int", INPUT_SIZE_STEP * 2, 4096)
    if len(sides) not in (1, 2):
        raise EdgekdError(f"config value input_size={value!r} must be one side or [height, width]")
    sides = [check_value("input_size", v, rule) for v in sides]
    if any(side % INPUT_SIZE_STEP for side in sides):
        raise EdgekdError(f"config value input_size={value!r} must be a multiple of {INPUT_SIZE_STEP} "
                          f"(e.g. 224 or 256): the networks downsample by {INPUT_SIZE_STEP}")
    return sides[0] if not isinstance(value, (list, tuple)) else sides


def validate(config: dict) -> dict:
    """A copy of `config` with every value checked and converted (e.g. '1e-4' -> 0.0001)."""
    config = copy.deepcopy(config)
    for key, rule in RULES.items():
        section, _, name = key.rpartition(".")
        holder = config[section] if section else config
        holder[name] = check_value(key, holder[name], rule)
    config["input_size"] = _check_input_size(config["input_size"])
    if not isinstance(config["model_options"], dict):
        raise EdgekdError("config key 'model_options' must be a mapping")
    config["model_options"] = {k: _check_option(k, v) for k, v in config["model_options"].items()}
    _check_option_names(config["model"], config["model_options"])
    if config["scoring"]["weights"] is not None and config["scoring"]["combine"] != "weighted":
        raise EdgekdError(f"config value scoring.weights={config['scoring']['weights']} is only used with "
                          f"scoring.combine=weighted (it is {config['scoring']['combine']!r}): drop the weights or set "
                          "combine=weighted")
    if config["scoring"]["weights"] is not None and not any(config["scoring"]["weights"]):
        raise EdgekdError(f"config value scoring.weights={config['scoring']['weights']} weighs every scale 0: every "
                          "map would be flat and every part normal; give at least one weight above 0")
    return config


def _check_option_names(family: str, options: dict) -> None:
    """A typo in an option name (`wdith`) is refused with the family's valid names, before any work."""
    import inspect

    from edgekd.models import model_class
    cls = model_class(family)  # an unknown family is one line here
    valid: list[str] = []
    for klass in cls.__mro__:  # a family passes **options up to its base classes (STFPM's base takes none)
        if "__init__" not in klass.__dict__ or klass.__module__.startswith("torch"):
            continue
        parameters = list(inspect.signature(klass.__init__).parameters.values())
        valid += [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                  and p.name not in ("self", "teacher", "input_size", "scoring") and p.name not in valid]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            break
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise EdgekdError(f"model_options.{unknown[0]} is not an option of '{family}': valid options are "
                          f"{', '.join(valid) or 'none'}")


SIZE_OPTIONS = ("width", "embed", "widths", "channels", "dim", "heads", "groups")


def _check_option(key: str, value):
    """Family options are the family's to interpret, but every number among them is finite and not negative, and
    a layer size is at least 1 (a width of 0 builds a network that only fails at its first step)."""
    where = f"model_options.{key}"
    if isinstance(value, str) and any(c.isdigit() for c in value):  # '1e-4' in YAML is text
        try:
            value = float(value)
        except ValueError:
            pass
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            continue
        if not math.isfinite(item) or item < 0:
            raise EdgekdError(f"config value {where}={value!r} must be finite and >= 0")
        if key.endswith(SIZE_OPTIONS) and item < 1:
            raise EdgekdError(f"config value {where}={value!r} is a layer size: it must be >= 1")
    return value


def _merge(base: dict, update: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        where = f"{path}{key}"
        if key not in base and path.rstrip(".") not in _FREE_FORM:
            raise EdgekdError(f"unknown config key '{where}': valid keys here are {', '.join(base)}")
        if isinstance(base.get(key), dict) and key not in _FREE_FORM:
            if not isinstance(value, dict):
                raise EdgekdError(f"config key '{where}' must be a mapping")
            out[key] = _merge(base[key], value, where + ".")
        elif isinstance(base.get(key), dict) and isinstance(value, dict):
            # a free-form section takes any keys, but `--set model_options.x=1` changes x and keeps the others
            out[key] = {**base[key], **copy.deepcopy(value)}
        else:
            out[key] = copy.deepcopy(value)
    return out


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML with no surprises: a key given twice, an anchor or alias (a few lines that expand to gigabytes) or
    a document nested deeper than any config is refused instead of silently taken."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), "anchor", None):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(None, None, "anchors and aliases (& and *) are not used in edgekd "
                                                    "configs: write the value out", event.start_mark)
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.constructor.ConstructorError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                                                        self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key '{key}' is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


MAX_YAML_DEPTH = 20


def read_yaml_file(path: str | Path, what: str, examples: str) -> dict:
    """A YAML file whose top level is a mapping (a training config, a line file), read strictly: every problem is
    one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise EdgekdError(f"{what} {path} does not exist: {examples}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise EdgekdError(f"{what} {path} is not UTF-8 text (binary, or UTF-16): save it as UTF-8 YAML") from None
    except OSError as exc:
        raise EdgekdError(f"{what} {path} cannot be read ({exc.strerror or exc})") from None
    if "\x00" in text:
        raise EdgekdError(f"{what} {path} is not a text file: pass a YAML file ({examples})")
    loaded = read_yaml(text, f"{what} {path}") or {}
    if not isinstance(loaded, dict):
        raise EdgekdError(f"{what} {path} must be a YAML mapping at the top level")
    return loaded


def read_yaml(text: str, where: str):
    """`text` parsed strictly; any problem is one line naming `where` and the first reason."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())
        raise EdgekdError(f"{where} is not valid YAML: {reason[:200]}") from None
    except (RecursionError, ValueError, TypeError) as exc:
        raise EdgekdError(f"{where} is not valid YAML ({exc.__class__.__name__}): write plain YAML") from None


def parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise EdgekdError(f"override '{text}' is not KEY=VALUE (e.g. --set train.epochs=5)")
    key, raw = text.split("=", 1)
    if not key.strip() or any(not part.strip() for part in key.split(".")):
        raise EdgekdError(f"override '{text}' has no key before '=' (e.g. --set train.epochs=5)")
    return [part.strip() for part in key.split(".")], read_yaml(raw, f"--set {text!r}: the value")


# The detector `edgekd train` builds without --config: the README's default, configs/rd_lite0.yaml (shipped in the
# package; configs/ at the top of the repository links to edgekd/configs/).
DEFAULT_DETECTOR = Path(__file__).resolve().parent / "configs" / "rd_lite0.yaml"


def training_config(path: str | Path | None, overrides: list[str]) -> dict:
    """What `edgekd train` trains: the config file; without one the default detector, or, when --set names another
    family, that family's own file in configs/ (the default detector's RD options do not fit it)."""
    if path is None:
        path = DEFAULT_DETECTOR
        named = [parse_override(text)[1] for text in overrides if parse_override(text)[0] == ["model"]]
        if named and named[-1] != "rd":
            own = sorted(DEFAULT_DETECTOR.parent.glob(f"{named[-1]}_*.yaml"))
            path = own[0] if own else None  # an unknown family: the base values, and validation names it
    return load_config(path, overrides)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """The config file (None: the base values below, which every file is merged onto) with --set overrides."""
    config = copy.deepcopy(DEFAULTS)
    if path:
        config = _merge(config, read_yaml_file(path, "config file", "see configs/ for examples"))
    for text in overrides or []:
        keys, value = parse_override(text)
        nested: dict = value
        for key in reversed(keys):
            nested = {key: nested}
        config = _merge(config, nested)
    return validate(config)

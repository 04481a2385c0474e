"""`load_config`: a YAML file, then ``key=value`` overrides, merged onto the schema and validated."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from csfl_fabric.config.schema import _SHORTHAND_SECTIONS, COMPONENTS, Config
from csfl_fabric.config.validation import validate
from csfl_fabric.errors import ConfigError
from csfl_fabric.registry import closest_first, import_user_module


def load_config(source: str | Path | Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> Config:
    """Build a validated `Config` from a YAML file (or a dict) and ``key=value`` overrides.

    Args:
        source: a YAML path, a nested dict with the same keys, or None for the defaults.
        overrides: ``key=value`` strings applied after ``source`` (e.g. ``rounds.num_rounds=5``).

    Raises:
        ConfigError: a missing or malformed file, an unknown key, a wrong type or an out-of-range value.
        UnknownNameError: an unknown dataset, model, partitioner, selector or aggregator.
        InvalidParamsError: a param that the named component does not accept.
    """
    layers = [_read_source(source), _parse_overrides(overrides)]
    cfg: DictConfig = OmegaConf.structured(Config)
    for layer in layers:
        _check_callback_entries(layer)
        _normalize_shorthand(layer)
        _rename_import(layer)
        _drop_params_of_switched_components(cfg, layer)
        try:
            cfg = OmegaConf.merge(cfg, layer)  # type: ignore[assignment]
        except OmegaConfBaseException as e:
            raise _one_line(e) from None
    try:  # `${...}` interpolations resolve here
        config: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        raise _one_line(e) from None
    for i, module in enumerate(config.plugins):
        import_plugin(module, key=f"plugins[{i}]")
    import_plugin(config.selector.module)
    validate(config)
    return config


def _check_callback_entries(layer: dict[str, Any]) -> None:
    # OmegaConf names a bad key inside a list element without its list, so check the entries here.
    entries = layer.get("callbacks")
    if entries is None:
        return
    if not isinstance(entries, list):
        raise ConfigError(f"Expected `callbacks` to be a list of {{target, params}} entries but got {entries!r}.")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"Expected `callbacks[{i}]` to be a mapping {{target: ..., params: {{...}}}} but got "
                              f"{entry!r}.")
        unknown = sorted(set(entry) - {"target", "params"})
        if unknown:
            raise ConfigError(f"Unknown key `{unknown[0]}` in `callbacks[{i}]`. Valid keys: target, params.")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{dotted key: value}`` (lists are values; empty sections have no keys).

    >>> flatten({"train": {"lr": 0.1}, "data": {"partition": {"name": "iid", "params": {}}}, "plugins": []})
    {'train.lr': 0.1, 'data.partition.name': 'iid', 'plugins': []}
    """
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def override_keys(overrides: Sequence[str]) -> list[str]:
    """The schema's dotted keys that ``key=value`` overrides set (shorthand params and ``selector.import`` resolved).

    >>> override_keys(["data.partition.alpha=0.1", "train.lr=0.1", "selector.import=mine"])
    ['data.partition.params.alpha', 'train.lr', 'selector.module']
    """
    layer = _parse_overrides(overrides)
    _normalize_shorthand(layer)
    _rename_import(layer)
    return list(flatten(layer))


def _rename_import(layer: dict[str, Any]) -> None:
    # `import` is a Python keyword, so the dataclass field is `module`.
    section = _section(layer, "selector")
    if section is not None and "import" in section:
        section["module"] = section.pop("import")


def import_plugin(module: str | None, key: str = "selector.import") -> None:
    """Import the user module named by ``key`` (it registers its components on import).

    Raises:
        ConfigError: the module cannot be imported; the message says why and how to fix it.
    """
    if not module:
        return
    try:
        import_user_module(module)
    except ImportError as e:
        raise ConfigError(f"Could not import `{key}={module}` ({e}): put the module on PYTHONPATH "
                          "(e.g. run from its folder) and check that it imports.") from None


def to_yaml(config: Config) -> str:
    """The resolved config as YAML (what `runs/<experiment>/<run>/config.yaml` holds)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_dict(config: Config) -> dict[str, Any]:
    """The resolved config as a plain nested dict (e.g. for W&B)."""
    return dataclasses.asdict(config)


def _read_source(source: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return _plain(source)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"Config file `{path}` does not exist. Pass a YAML file, e.g. configs/quickstart.yaml.")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError as e:
        raise ConfigError(f"Config file `{path}` is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                          f"{e.start}); save it as UTF-8.") from None
    except DuplicateKeyError as e:
        raise ConfigError(f"Config file `{path}` has the key `{e.key}` twice (lines {e.first} and {e.second}); "
                          "keep one of them.") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"Config file `{path}` is not valid YAML{line}: {getattr(e, 'problem', e)}.") from None
    if data is None or data == {}:
        # An empty file is almost always a mistake (a wrong path, an unsaved editor buffer): running every
        # default silently would hide it. Defaults on purpose: `load_config(None)` or `{}` in Python.
        raise ConfigError(f"Config file `{path}` is empty (or only comments): give at least `experiment:` and the "
                          "keys you change, e.g. start from configs/quickstart.yaml.")
    if not isinstance(data, dict):
        raise ConfigError(f"Config file `{path}` must hold a mapping of keys, but holds a {type(data).__name__}.")
    return data


class DuplicateKeyError(yaml.YAMLError):
    """A mapping of a YAML file names a key twice (plain YAML would silently keep the last one)."""

    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"duplicate key {key!r} (lines {first} and {second})")
        self.key, self.first, self.second = key, first, second


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping, naming the key and both lines."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Check the mapping's own keys (``<<`` merges may still be overridden), then construct it."""
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _plain(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _plain(v) if isinstance(v, Mapping) else v for k, v in mapping.items()}


def _parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"Override `{bad[0]}` is not of the form key=value (e.g. rounds.num_rounds=5).")
    try:
        return _plain(OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides))))  # type: ignore[arg-type]
    except (OmegaConfBaseException, yaml.YAMLError):
        for o in overrides:  # name the one override that does not parse
            try:
                OmegaConf.from_dotlist([o])
            except (OmegaConfBaseException, yaml.YAMLError) as e:
                reason = " ".join(str(getattr(e, "problem", None) or e).split())
                raise ConfigError(f"Override `{o}` does not parse ({reason}); fix its value, or quote it in the "
                                  "shell to pass it as a string.") from None
        raise


def _section(tree: dict[str, Any], path: str) -> dict[str, Any] | None:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, dict) else None


def _normalize_shorthand(layer: dict[str, Any]) -> None:
    for path in _SHORTHAND_SECTIONS:
        section = _section(layer, path)
        if section is None:
            continue
        extra = [k for k in section if k not in ("name", "params", "import", "module")]
        if extra:
            params = section.setdefault("params", {}) or {}
            section["params"] = params
            for key in extra:
                params[key] = section.pop(key)


def _drop_params_of_switched_components(cfg: DictConfig, layer: dict[str, Any]) -> None:
    for path, name_key, _ in COMPONENTS:
        section = _section(layer, path)
        if section is None or name_key not in section:
            continue
        if section[name_key] != OmegaConf.select(cfg, f"{path}.{name_key}"):
            OmegaConf.update(cfg, f"{path}.params", {}, merge=False)


def _one_line(e: OmegaConfBaseException) -> ConfigError:
    key = getattr(e, "full_key", None) or "?"
    if isinstance(e, ConfigKeyError):
        parent, _, leaf = key.rpartition(".")
        valid = _schema_keys(parent)
        where = f" under `{parent}`" if parent else ""
        hint = f" Valid keys{where} (closest first): {', '.join(closest_first(leaf, valid))}."
        return ConfigError(f"Unknown config key `{key}`.{hint if valid else ''}")
    if isinstance(e, ValidationError):
        expected = _schema_type(key)
        return ConfigError(f"Expected `{key}` to be {expected} but got {e.value!r}.")  # type: ignore[attr-defined]
    return ConfigError(f"Invalid config at `{key}`: {str(e).splitlines()[0]}")


def _schema_node(path: str) -> Any:
    node: Any = Config
    for part in filter(None, path.split(".")):
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return None
        f = fields[part]
        node = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        node = type(node) if dataclasses.is_dataclass(node) else f
    return node


def _schema_keys(path: str) -> list[str]:
    node = _schema_node(path)
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []


def _schema_type(path: str) -> str:
    node = _schema_node(path)
    kind = str(getattr(node, "type", "a valid value")).replace("typing.", "").replace("Optional", "optional ")
    return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(kind, kind)


#: Keys that may differ between a checkpoint's run and its resume: they do not change what is computed.
#: (``rounds.num_rounds`` may grow, to extend a finished run; ``compare`` is read by `compare` only, and
#: ``launcher`` decides where a run goes, not what it computes.)
HASH_EXCLUDED = ("resume", "logging", "checkpoint", "memory", "rounds.num_rounds", "callbacks", "compare", "launcher")


def config_hash(config: Config) -> str:
    """A hash of the config keys that decide the results (everything but `HASH_EXCLUDED`)."""
    tree = to_dict(config)
    for key in HASH_EXCLUDED:
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node[p]
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]

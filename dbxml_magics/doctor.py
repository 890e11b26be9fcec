"""`%aml_link --doctor`: a preflight before a long training, one line per check.

Each check says OK, WARN or FAIL, what it saw, and for WARN/FAIL the fix. The whole report is
bounded (`DEADLINE` s, every network check in parallel, each with its own shorter bound), so
it answers with no network and no credential; it reads no token into its output, only the
token's kind, owner and expiry, and shows environment values masked.
"""

import base64
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .masking import first_line, mask_uri

__all__ = ["Check", "run_checks", "doctor_report", "doctor_from_args", "DEADLINE"]

DEADLINE = 8.0  # seconds for the whole report; the bound is 10 s
_STORE_TIMEOUT = 4.0  # one probe per store
_TOKEN_TIMEOUT = 3.0
# DefaultAzureCredential reads these before anything else (EnvironmentCredential, and the
# managed identity's client id): the trap of azure-sdk-for-python#38813.
_AZURE_IDENTITY_ENV = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
                       "AZURE_USERNAME", "AZURE_FEDERATED_TOKEN_FILE")


@dataclass(frozen=True)
class Check:
    status: str  # "OK", "WARN", "FAIL"
    name: str
    detail: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.status:<4}  {self.name:<11} {self.detail}"
        return text + (f" -> {self.fix}" if self.fix and self.status != "OK" else "")


def doctor_from_args(session, args) -> str:
    """`%aml_link --doctor` checks the link in place: it takes no other option."""
    from .errors import LinkError

    others = [f"--{k.replace('_', '-')}" for k, v in vars(args).items() if k not in ("doctor", "auth") and v is not None]
    if others or args.auth != "default":
        raise LinkError(f"--doctor checks the current link and takes no other option (got {', '.join(others or ['--auth'])}).")
    return doctor_report(session)


def doctor_report(session) -> str:
    return "\n".join(str(check) for check in run_checks(session))


def run_checks(session) -> list[Check]:
    """Every check, in reading order; the network ones run in parallel within DEADLINE."""
    started = time.monotonic()
    link = session.link
    slow: list[tuple[str, Callable[[], list[Check]]]] = [
        (f"store {role}", lambda t=target, r=role: [_store(t, r)]) for role, target in _roles(link)
    ]
    slow += [("credential", lambda t=t: [_credential(t)]) for t in link.targets if t.kind == "aml"]
    answers = _in_parallel(slow, DEADLINE - (time.monotonic() - started))
    checks = [_link(link)]
    checks += [c for name, found in answers if name.startswith("store") for c in found]
    checks += [c for name, found in answers if name == "credential" for c in found]
    if not any(t.kind == "aml" for t in link.targets):
        checks.append(Check("OK", "credential", "none needed: no Azure ML store is linked"))
    checks += [_registry(link), *_environment(link), *_experiments(session), *_versions(link), _journal(session)]
    return checks


def _roles(link):
    return [("primary", link.primary)] + ([("mirror", link.mirror)] if link.mirror is not None else [])


def _in_parallel(work: list[tuple[str, Callable[[], list[Check]]]], seconds: float) -> list[tuple[str, list[Check]]]:
    """Run each check on a daemon thread; one that has not answered by the deadline FAILs."""
    results: dict[int, list[Check]] = {}
    threads = []
    for index, (name, check) in enumerate(work):
        def run(index=index, check=check, name=name):
            try:
                results[index] = check()
            except Exception as exc:  # noqa: BLE001 - a check that breaks is a FAIL line, not a traceback
                results[index] = [Check("FAIL", name.split()[0], first_line(exc, 200))]
        thread = threading.Thread(target=run, name="dbxml-doctor", daemon=True)
        thread.start()
        threads.append(thread)
    deadline = time.monotonic() + max(0.5, seconds)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    def silent(name: str) -> Check:  # "store primary" -> "FAIL  store  primary: no answer ..."
        check, _, role = name.partition(" ")
        return Check("FAIL", check, f"{role + ': ' if role else ''}no answer within {seconds:.0f} s",
                     "check the network; %aml_sync shows what waits")

    return [(name, results.get(i) or [silent(name)]) for i, (name, _) in enumerate(work)]


# ---------------------------------------------------------------------------- the checks
def _link(link) -> Check:
    import mlflow

    where = link.primary.display + (f", mirror {link.mirror.display}" if link.mirror is not None else "")
    if link.mode == "default":
        return Check("OK", "link", f"not linked: the embedded store {where}", "")
    current = mlflow.get_tracking_uri()
    if current != link.primary.uri:  # mlflow.set_tracking_uri since linking
        return Check("WARN", "link", f"mode {link.mode}: {where}; but MLflow now points at {mask_uri(current)}",
                     "MLflow code outside the magics logs there until the next magic points MLflow back at the "
                     "link: drop the mlflow.set_tracking_uri call, or %aml_link that store")
    return Check("OK", "link", f"mode {link.mode}: {where}")


def _store(target, role: str) -> Check:
    from .errors import DbxmlError
    from .link import probe_target

    started = time.monotonic()
    try:
        probe_target(target, _STORE_TIMEOUT)
    except DbxmlError as exc:
        return Check("FAIL", "store", f"{role}: {first_line(exc, 500)}",  # the message names the store
                     "start the server or fix the URI; runs wait in the journal meanwhile")
    return Check("OK", "store", f"{role} {target.display} answered in {time.monotonic() - started:.1f} s")


def _credential(target) -> Check:
    from .workspace import cloud_scope

    credential = target.credential
    auth = getattr(credential, "auth", "default")
    if credential is None:
        return Check("FAIL", "credential", f"{target.workspace}: no credential", f"link again with %aml_link --auth {auth}")
    try:
        token = credential.get_token(cloud_scope())  # cached when the link checked it
    except Exception as exc:  # noqa: BLE001
        return Check("FAIL", "credential", f"--auth {auth}: {first_line(exc, 150)}",
                     "sign in again (az login, or the variables of --auth service-principal) and re-link")
    minutes = (token.expires_on - time.time()) / 60
    who = _token_owner(token.token)
    detail = f"--auth {auth}, identity {who}, token valid {minutes:.0f} more min"
    if minutes < 10:
        return Check("WARN", "credential", detail, "a new token is fetched automatically; sign in again if that fails")
    return Check("OK", "credential", detail)


def _token_owner(token: str) -> str:
    """The signed-in name of a JWT access token (its claims, never the token itself)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return "unknown (opaque token)"
    for claim in ("upn", "unique_name", "preferred_username", "app_displayname", "appid", "oid"):
        if claims.get(claim):
            return f"{claim}={claims[claim]}"
    return "unknown"


def _registry(link) -> Check:
    import mlflow

    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    primary = link.primary
    expected = primary.registry_uri or primary.uri
    if primary.kind == "databricks" and registry.startswith("databricks-uc"):
        return Check("OK", "registry", "models register in Unity Catalog (databricks-uc), runs in the Databricks workspace")
    if registry and registry != expected and registry != tracking:
        source = " (MLFLOW_REGISTRY_URI)" if os.environ.get("MLFLOW_REGISTRY_URI") else ""
        return Check("WARN", "registry", f"runs go to {mask_uri(tracking)} but models register in {mask_uri(registry)}{source}",
                     "unset MLFLOW_REGISTRY_URI / mlflow.set_registry_uri(None) to register beside the runs")
    where = mask_uri(registry or tracking)
    mirror = f"; %aml_register also registers in {link.mirror.display}" if link.mirror is not None else ""
    return Check("OK", "registry", f"models register in {where}{mirror}")


def _environment(link) -> list[Check]:
    env = os.environ
    checks = []
    tracking = env.get("MLFLOW_TRACKING_URI")
    if tracking and tracking != link.primary.uri:
        checks.append(Check("WARN", "environment", f"MLFLOW_TRACKING_URI={mask_uri(tracking)} differs from the link",
                            "new processes (Spark workers, subprocesses, a restarted kernel) use it: unset it or "
                            "link it (mlflow#8877)"))
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        if env.get(name) and link.experiment and env[name] != link.experiment:
            checks.append(Check("WARN", "environment", f"{name}={env[name]!r} contradicts the link's experiment "
                                f"{link.experiment!r}", f"unset {name}, or link with --experiment {env[name]}"))
    azure = [name for name in _AZURE_IDENTITY_ENV if env.get(name)]
    auths = {getattr(t.credential, "auth", None) for t in link.targets if t.kind == "aml"}
    if azure and auths & {"default", "managed-identity"}:
        shown = " ".join(f"{name}=***" for name in azure)
        checks.append(Check("WARN", "environment", f"{shown} set: --auth {'/'.join(sorted(a for a in auths if a))} signs "
                            "in with them first (as a service principal or that managed identity), not as you",
                            "unset them, or link with --auth service-principal if they are meant (azure-sdk-for-python#38813)"))
    for name in ("ARM_CLOUD_METADATA_URL", "AZUREML_CURRENT_CLOUD"):
        # azure-ai-ml's MLClient sets AZUREML_CURRENT_CLOUD to its cloud: the public one is no surprise.
        if env.get(name) and not (name == "AZUREML_CURRENT_CLOUD" and env[name] == "AzureCloud"):
            checks.append(Check("WARN", "environment", f"{name}={mask_uri(env[name])} chooses the Azure cloud endpoints",
                                f"unset {name} unless this is a sovereign or private cloud"))
    if not checks:
        checks.append(Check("OK", "environment", "no MLFLOW_* or AZURE_* variable overrides or contradicts the link"))
    return checks


def _experiments(session) -> list[Check]:
    from .experiments import resolve_experiment

    name = session.link.experiment or session.settings.experiment
    if not name:
        return [Check("OK", "experiment", "none chosen: runs go to MLflow's active experiment (Default)")]
    checks = []
    for role, target in _roles(session.link):
        there = resolve_experiment(target, name, session.settings)
        if there == name:
            checks.append(Check("OK", "experiment", f"{name!r} on the {role} store"))
        elif target.kind == "aml":
            checks.append(Check("WARN", "experiment", f"{name!r} becomes {there!r} on the {role} (AML finds no name "
                                "with '/', mlflow#8269)", f"mlflow.set_experiment({there!r}) in your own code, not the path"))
        else:
            checks.append(Check("OK", "experiment", f"{name!r} becomes {there!r} on the {role} store"))
    return checks


def _versions(link) -> list[Check]:
    from .versions import installed_versions, mlflow_mixture

    versions = installed_versions()
    mlflow, skinny = versions["mlflow"], versions["mlflow-skinny"]
    azureml, pyspark = versions["azureml-mlflow"], versions["pyspark"]
    found = (f"mlflow {mlflow or '-'}, mlflow-skinny {skinny or '-'}, azureml-mlflow {azureml or '-'}, "
             f"pyspark {pyspark or '-'}, python {versions['python']}")
    mixture = mlflow_mixture()
    if mixture:
        problem, _, fix = mixture.partition("; ")
        return [Check("FAIL", "versions", problem, fix)]
    if (mlflow or skinny) is None:
        return [Check("FAIL", "versions", found, "pip install mlflow")]
    if azureml is None and any(t.kind == "aml" for t in link.targets):
        return [Check("FAIL", "versions", f"{found}: an Azure ML store is linked", "pip install azureml-mlflow")]
    installed = {"python": versions["python"], "mlflow": mlflow or skinny, "azureml-mlflow": azureml, "pyspark": pyspark}
    runtime, differing = _nearest_profile(installed)
    if not differing:
        return [Check("OK", "versions", f"{found}: as in the tested profile {runtime}")]
    theirs = ", ".join(f"{key} {version}" for key, version in differing)
    return [Check("WARN", "versions", f"{found}: no tested profile has these; the nearest, {runtime}, "
                  f"has {theirs}", "install a tested profile's versions (README, support table)")]


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def _nearest_profile(installed: dict[str, str | None]) -> tuple[str, list[tuple[str, str]]]:
    """The tested profile (compat/*.txt) nearest the installed versions, compared by major.minor
    on what the profile pins and is installed: (its runtime, [(key, the profile's version)
    where they differ]); fewest differences first, then the smallest version distance."""
    from .tested_profiles import PROFILES

    def compare(pins: dict[str, str]):
        differing, distance = [], 0
        for key, version in pins.items():
            if installed.get(key) is None:
                continue
            mine, theirs = _major_minor(installed[key]), _major_minor(version)
            if mine != theirs:
                differing.append((key, version))
                distance += sum(abs(a - b) * weight for a, b, weight in zip(mine, theirs, (100, 1)))
        return len(differing), distance, differing

    _, runtime, pins = min(PROFILES, key=lambda profile: compare(profile[2])[:2])
    return runtime, compare(pins)[2]


def _journal(session) -> Check:
    from .status import format_age

    if not session.journal_started:
        return Check("OK", "journal", "not started: nothing tracked yet")
    rows = session.journal.status()
    pending = sum(r["pending"] for r in rows)
    failed = sum(r["failed"] for r in rows)
    errors = [r["last_error"] for r in rows if r["last_error"]]
    synced = max((r["last_sync"] or 0 for r in rows), default=0)
    detail = f"{pending} pending, {failed} failed, last sync {format_age(synced or None)}"
    oldest = session.journal.oldest_waiting() if pending or failed else None
    if oldest is not None:
        detail += f", oldest row written {format_age(oldest)}"
    if failed:
        return Check("FAIL", "journal", detail + (f", last error: {errors[0]}" if errors else ""),
                     "%aml_sync shows them; --retry sends them again, --discard drops them")
    if pending and errors:
        return Check("WARN", "journal", f"{detail}, last error: {errors[0]}", "%aml_sync --flush once the store answers")
    return Check("OK", "journal", detail)

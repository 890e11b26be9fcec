"""Azure ML workspace resolution; the only module that talks to the Azure SDK."""

from .errors import LinkError

__all__ = ["resolve_workspace_target", "target_from_azureml_uri"]


def resolve_workspace_target(args, settings):
    raise LinkError("Azure ML workspaces cannot be linked yet; use --uri or --local.")


def target_from_azureml_uri(uri, args, settings):
    raise LinkError("azureml:// URIs cannot be linked yet; use --uri http(s)://... or --local.")

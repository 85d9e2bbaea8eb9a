"""The Kubeflow Model Registry REST API, both generations a cluster may run:

* `/api/model_registry/v1alpha3/...`: kubeflow/model-registry v0.2.x-v0.3.x, what stock Kubeflow manifests and
  OpenShift AI deploy;
* `/api/model_registry/v1/...`: newer servers (what the `model-registry` Python client 0.3.x calls, and only
  that: against a v1alpha3 server its first call gets the Go router's plain-text `404 page not found`).

The routes and bodies are the same in both (api/openapi/model-registry.yaml); only the prefix differs, so the
client asks which prefix the server serves (`detect_api`) unless the deployment pins one.

Registration is a sequence of find-or-create steps (registered model, model version, model artifact), so a
retry after a partial success (a pod killed after the version was created) completes it instead of failing on
"already exists". A server refuses a duplicate name with 409 Conflict ("... already exists: conflict",
internal/core/*.go since v0.2.20; older MLMD-based servers answered 500): any refused create is followed by a
find, and only when the entity is still absent is the server's message an error.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import requests

from beit3core.errors import UserError

API_VERSIONS = ("v1", "v1alpha3")  # newest first: what `detect_api` tries
PREFIX = "/api/model_registry/{}"
TIMEOUT_S = 30


def metadata_value(value) -> dict:
    """A customProperties value (MetadataValue, discriminated by metadataType)."""
    if isinstance(value, bool):
        return {"metadataType": "MetadataBoolValue", "bool_value": value}
    if isinstance(value, (int, float)):
        return {"metadataType": "MetadataDoubleValue", "double_value": float(value)}
    return {"metadataType": "MetadataStringValue", "string_value": str(value)}


def plain_value(value: dict):
    """The Python value of a MetadataValue."""
    for key in ("double_value", "string_value", "bool_value", "int_value"):
        if key in value:
            return value[key]
    return None


class RegistryHTTP:
    """One Model Registry server: `base_url` (http(s)://HOST:PORT), `api` one of API_VERSIONS or "auto"."""

    def __init__(self, base_url: str, *, api: str = "auto", token: str | None = None, session=None,
                 timeout: float = TIMEOUT_S):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"--registry kubeflow:{base_url}: expected http(s)://HOST[:PORT]")
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError as exc:
            raise UserError(f"--registry kubeflow:{base_url}: {exc}") from None
        if api not in ("auto", *API_VERSIONS):
            raise UserError(f"model registry API {api!r}: expected auto, {' or '.join(API_VERSIONS)}")
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout
        self.api = api if api != "auto" else ""

    # ---------------------------------------------------------------------------------------------- HTTP

    def _request(self, method: str, path: str, *, api: str | None = None, **kwargs) -> requests.Response:
        url = self.base_url + PREFIX.format(api or self.prefix_api()) + path
        try:
            return self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            reason = type(exc).__name__ if not str(exc) else str(exc).splitlines()[0][:200]
            raise UserError(f"model registry {self.base_url}: cannot reach the server ({reason})") from None

    def _json(self, resp: requests.Response, what: str) -> dict:
        if resp.status_code in (401, 403):
            raise UserError(f"model registry {self.base_url}: {what}: HTTP {resp.status_code} (set "
                            "MODEL_REGISTRY_TOKEN to a token the server accepts)")
        if not resp.ok:
            raise UserError(f"model registry {self.base_url}: {what}: HTTP {resp.status_code}: {message(resp)}")
        try:
            return resp.json()
        except ValueError:
            raise UserError(f"model registry {self.base_url}: {what}: the answer is not JSON") from None

    def prefix_api(self) -> str:
        if not self.api:
            self.api = self.detect_api()
        return self.api

    def detect_api(self) -> str:
        """The API generation the server serves: the first of API_VERSIONS whose list route answers."""
        for api in API_VERSIONS:
            resp = self._request("GET", "/registered_models", api=api, params={"pageSize": "1"})
            if resp.status_code == 404:  # the router does not serve this prefix
                continue
            self._json(resp, f"GET {PREFIX.format(api)}/registered_models")
            return api
        raise UserError(f"model registry {self.base_url}: serves neither "
                        + " nor ".join(PREFIX.format(a) for a in API_VERSIONS) + " (is this a Model Registry?)")

    def _find(self, path: str, params: dict, what: str) -> dict | None:
        resp = self._request("GET", path, params=params)
        if resp.status_code == 404:
            return None
        return self._json(resp, what)

    def _find_or_create(self, find: tuple[str, dict], create: tuple[str, dict], what: str) -> tuple[dict, bool]:
        """(entity, created): the existing entity, else a new one; a refused create (a concurrent or earlier
        attempt made it) is looked up again before its error counts."""
        found = self._find(*find, what)
        if found is not None:
            return found, False
        resp = self._request("POST", create[0], json=create[1])
        if resp.ok:
            return self._json(resp, what), True
        found = self._find(*find, what)
        if found is not None:
            return found, False
        return self._json(resp, f"create {what}"), True  # raises with the server's message

    def _list(self, path: str, what: str) -> list[dict]:
        items, token = [], ""
        while True:
            params = {"pageSize": "100", **({"nextPageToken": token} if token else {})}
            page = self._json(self._request("GET", path, params=params), what)
            items += page.get("items") or []
            token = page.get("nextPageToken") or ""
            if not token or not page.get("items"):
                return items

    # ---------------------------------------------------------------------------------------------- entities

    def registered_model(self, name: str, *, description: str = "") -> tuple[dict, bool]:
        body = {"name": name, **({"description": description} if description else {})}
        return self._find_or_create(("/registered_model", {"name": name}), ("/registered_models", body),
                                    f"registered model {name!r}")

    def model_version(self, model_id: str, name: str, *, author: str, description: str,
                      properties: dict) -> tuple[dict, bool]:
        body = {"name": name, "registeredModelId": model_id, "author": author,
                "customProperties": {k: metadata_value(v) for k, v in properties.items()},
                **({"description": description} if description else {})}
        return self._find_or_create(("/model_version", {"name": name, "parentResourceId": model_id}),
                                    ("/model_versions", body), f"model version {name!r}")

    def model_artifacts(self, version_id: str) -> list[dict]:
        arts = self._list(f"/model_versions/{version_id}/artifacts", f"artifacts of model version {version_id}")
        return [a for a in arts if a.get("artifactType", "model-artifact") == "model-artifact"]

    def add_model_artifact(self, version_id: str, body: dict) -> dict:
        body = {"artifactType": "model-artifact", **body}
        resp = self._request("POST", f"/model_versions/{version_id}/artifacts", json=body)
        return self._json(resp, f"create model artifact {body.get('name')!r}")

    def registered_models(self) -> list[dict]:
        return self._list("/registered_models", "registered models")

    def versions_of(self, model_id: str) -> list[dict]:
        return self._list(f"/registered_models/{model_id}/versions", f"versions of registered model {model_id}")


def message(resp: requests.Response) -> str:
    """The server's error message: the `message` of its JSON Error body, else the first line of the text."""
    try:
        body = resp.json()
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except ValueError:
        pass
    return (resp.text or "").strip().splitlines()[0][:200] if resp.text and resp.text.strip() else resp.reason or ""

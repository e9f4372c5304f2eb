"""The runtime interface over the network: a Triton Inference Server (`edgekd serve`, or any Triton holding an
edgekd model) does the inference, everything else in `edgekd run` stays local.

The model's input size and thresholds come from the server (its model config parameters), so the client cannot
pair a stream with another model's thresholds. Frames travel as uint8 NHWC (a quarter of float32's bytes).
When the server cannot be reached, run() waits with a growing backoff and raises ServerUnavailable: the runner
counts that batch's frames as lost and carries on, and the next batch tries again.
"""

from __future__ import annotations

import threading
import time
from urllib.parse import urlparse

import numpy as np

from edgekd.deploy.triton_parameters import REQUIRED, api_key_headers, read_parameters
from edgekd.errors import EdgekdError
from edgekd.runtime.base import Runtime, RuntimeUnavailable

SCHEMES = ("grpc", "http")


class ServerUnavailable(RuntimeUnavailable):
    """The server did not answer; the frames of this batch were not scored."""


def parse_server_url(url: str) -> tuple[str, str]:
    parsed = urlparse(url if "://" in url else f"grpc://{url}")
    if parsed.scheme not in SCHEMES or not parsed.hostname or not parsed.port:
        raise EdgekdError(f"--server {url!r} must look like grpc://HOST:PORT or http://HOST:PORT")
    return parsed.scheme, f"{parsed.hostname}:{parsed.port}"


class TritonClientRuntime(Runtime):
    backend = "triton"
    warm_up = False  # the server's model is loaded and warm; zeros would only add requests to its statistics

    def __init__(self, url: str, model: str, timeout_s: float = 10.0, max_backoff_s: float = 2.0,
                 api_key: str | None = None):
        self.scheme, self.address = parse_server_url(url)
        self.headers = api_key_headers(self.scheme, api_key)  # 'edgekd serve --api-key-file' checks it
        self._clients: list = []
        self.model, self.timeout_s, self.max_backoff_s = model, timeout_s, max_backoff_s
        if self.scheme == "grpc":
            import tritonclient.grpc as client_module
        else:
            import tritonclient.http as client_module
        self.module = client_module
        self._local = threading.local()  # the HTTP client (gevent) must stay in the thread that made it
        params = self._model_parameters(url)
        info = read_parameters(params)
        info.artifact = f"{url}/{model}"
        super().__init__(info)
        self.down_since: float | None = None
        self.backoff = 0.0
        self.outages: list[float] = []  # seconds the server was unreachable, one entry per outage

    @property
    def client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self.module.InferenceServerClient(self.address)
            self._clients.append(client)
        return client

    def _model_parameters(self, url: str) -> dict[str, str]:
        from tritonclient.utils import InferenceServerException
        try:
            if not self.client.is_server_live(headers=self.headers):
                raise EdgekdError(f"the Triton server at {url} is not live yet: wait for 'edgekd serve' to say serving")
            if self.scheme == "grpc":
                config = self.client.get_model_config(self.model, headers=self.headers, as_json=True)["config"]
            else:
                config = self.client.get_model_config(self.model, headers=self.headers)
        except InferenceServerException as exc:
            if "unknown model" in str(exc) or "not found" in str(exc):
                names = [m["name"] if isinstance(m, dict) else m.name for m in self._repository()]
                raise EdgekdError(f"the server at {url} has no model {self.model!r}: it serves {', '.join(names) or 'none'}") from None
            raise EdgekdError(f"cannot reach the Triton server at {url} ({str(exc).splitlines()[0][:120]}): start "
                              "'edgekd serve ARTIFACT' there, or check the address") from None
        except Exception as exc:  # the HTTP client raises socket errors of its own
            raise EdgekdError(f"cannot reach the Triton server at {url} ({exc.__class__.__name__}): start "
                              "'edgekd serve ARTIFACT' there, or check the address") from None
        params = {k: (v["string_value"] if isinstance(v, dict) else v.string_value)
                  for k, v in config.get("parameters", {}).items()}
        missing = [k for k in REQUIRED if k not in params]
        if missing:
            raise EdgekdError(f"model {self.model!r} at {url} is not an edgekd model (no {missing[0]} parameter): serve "
                              "it with 'edgekd serve'")
        return params

    def _repository(self) -> list:
        index = self.client.get_model_repository_index(headers=self.headers, as_json=True) if self.scheme == "grpc" \
            else self.client.get_model_repository_index(headers=self.headers)
        return index.get("models", []) if isinstance(index, dict) else index

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from tritonclient.utils import InferenceServerException
        frames = np.ascontiguousarray((np.clip(batch, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1))
        request = self.module.InferInput("frames", list(frames.shape), "UINT8")
        request.set_data_from_numpy(frames)
        outputs = [self.module.InferRequestedOutput(name) for name in ("anomaly_map", "score")]
        if self.backoff:
            time.sleep(self.backoff)  # while the server is away, do not spin on it
        try:
            if self.scheme == "grpc":
                result = self.client.infer(self.model, [request], outputs=outputs, client_timeout=self.timeout_s,
                                            headers=self.headers)
            else:
                result = self.client.infer(self.model, [request], outputs=outputs, timeout=int(self.timeout_s * 1e6),
                                            headers=self.headers)
        except InferenceServerException as exc:
            if _is_request_error(exc):
                raise EdgekdError(f"the server refused the request: {str(exc).splitlines()[0][:200]}") from None
            self._went_down()
            raise ServerUnavailable(str(exc).splitlines()[0][:200]) from None
        except Exception as exc:  # connection refused/reset from the HTTP client
            self._went_down()
            raise ServerUnavailable(exc.__class__.__name__) from None
        if self.down_since is not None:
            self.outages.append(time.monotonic() - self.down_since)
            self.down_since, self.backoff = None, 0.0
        return result.as_numpy("anomaly_map"), result.as_numpy("score").reshape(-1)

    def _went_down(self) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
        self.backoff = min(self.max_backoff_s, max(0.1, 2 * self.backoff))

    @property
    def server_down(self) -> bool:
        return self.down_since is not None

    def close(self) -> None:
        for client in self._clients:
            try:
                client.close()
            except Exception:  # closing a client whose server is gone
                pass


def _is_request_error(exc) -> bool:
    """A malformed request (shape, type, unknown input) is a bug to report, not an outage to wait out."""
    status = str(exc.status() or "")
    return "INVALID_ARG" in status or status == "400" or "unexpected shape" in str(exc)

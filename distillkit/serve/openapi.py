"""The server's OpenAPI 3.1 document, built from the same `Limits` the request checks read, so the two agree.

A request that breaks this schema gets 400; one that follows it but breaks a rule it cannot state (two lists of
different lengths, a prompt plus completion past the context) gets 422. tests/test_serve_schema.py runs
schemathesis against it.
"""

from __future__ import annotations

from distillkit.serve.checks import MAX_TEMPERATURE, MIN_TEMPERATURE, Limits
from distillkit.serve.trl import DEFAULT_TOP_LOGPROBS


def openapi_document(limits: Limits, secured: bool) -> dict:
    token = {"type": "integer", "minimum": 0, "maximum": limits.vocab_size - 1}
    sequence = {"type": "array", "items": token, "maxItems": limits.context_length}
    sequences = {"type": "array", "items": sequence, "maxItems": limits.max_sequences}
    prompt_lengths = {"type": "array", "maxItems": limits.max_sequences,
                      "items": {"type": "integer", "minimum": 0, "maximum": limits.context_length}}
    temperature = {"type": "number", "minimum": MIN_TEMPERATURE, "maximum": MAX_TEMPERATURE}
    k = {"type": "integer", "minimum": 1, "maximum": limits.max_k}
    error = {"$ref": "#/components/schemas/Error"}
    refusals = {
        "400": {"description": "the request breaks this schema", "content": {"application/json": {"schema": error}}},
        "401": {"description": "a missing or wrong API key", "content": {"application/json": {"schema": error}}},
        "408": {"description": "the body did not arrive within --body-timeout",
                "content": {"application/json": {"schema": error}}},
        "413": {"description": "the body is over --max-body-bytes", "content": {"application/json": {"schema": error}}},
        "422": {"description": "the request follows this schema but breaks a rule it cannot state (list lengths, "
                               "a prompt length past its sequence, the model's context)",
                "content": {"application/json": {"schema": error}}},
        "503": {"description": "not answered within --request-timeout",
                "content": {"application/json": {"schema": error}}},
    }

    def post(summary: str, body: dict, answer: dict, extra: dict | None = None) -> dict:
        return {"summary": summary, "requestBody": {"required": True, "content": {"application/json": {
            "schema": body}}}, "responses": {"200": {"description": "the answer", "content": answer}, **refusals,
                                             **(extra or {})}}

    def get(summary: str, answer: dict) -> dict:
        return {"summary": summary, "responses": {"200": {"description": "the answer", "content": {
            "application/json": {"schema": answer}}}, "401": refusals["401"]}}

    nullable_int = {"type": ["integer", "null"]}
    score_request = {
        "type": "object", "required": ["sequences", "prompt_lengths", "k", "temperature"],
        "properties": {"sequences": sequences, "prompt_lengths": prompt_lengths, "k": k, "temperature": temperature,
                       "vocab_size": {"type": ["integer", "null"], "minimum": 1, "maximum": limits.vocab_size}},
    }
    matrix = {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
    score_answer = {
        "type": "object", "required": ["rows", "k", "temperature", "vocab_size", "rows_per_sequence", "topk_logprobs",
                                       "topk_ids", "token_logprobs"],
        "properties": {"rows": {"type": "integer"}, "k": {"type": "integer"}, "temperature": {"type": "number"},
                       "vocab_size": {"type": "integer"},
                       "rows_per_sequence": {"type": "array", "items": {"type": "integer"}},
                       "topk_logprobs": matrix, "topk_ids": {"type": "array", "items": {"type": "array", "items": {
                           "type": "integer"}}}, "token_logprobs": {"type": "array", "items": {"type": "number"}}},
    }
    text = {"type": "string", "minLength": 1}
    prompt = {"anyOf": [
        text,
        {"type": "array", "items": text, "minItems": 1, "maxItems": limits.max_sequences},
        {"type": "array", "items": token, "minItems": 1, "maxItems": limits.context_length},
        {"type": "array", "items": {**sequence, "minItems": 1}, "minItems": 1, "maxItems": limits.max_sequences},
    ]}
    completions_request = {
        "type": "object", "required": ["prompt"],
        "properties": {
            "model": {"type": ["string", "null"]},
            "prompt": prompt,
            "max_tokens": {**nullable_int, "minimum": 0, "maximum": limits.context_length},
            "logprobs": {**nullable_int, "minimum": 0, "maximum": limits.max_k},
            "prompt_logprobs": {**nullable_int, "minimum": 0, "maximum": limits.max_k},
            "echo": {"type": ["boolean", "null"]},
            "n": {**nullable_int, "minimum": 1, "maximum": 1},
            "best_of": {**nullable_int, "minimum": 1, "maximum": 1},
            "stream": {"enum": [False, None]},
            "temperature": {"anyOf": [{"type": "null"}, {"type": "number", "minimum": 0, "maximum": 0},
                                      temperature],
                            "description": "0: log-probs at temperature 1 (greedy); else the log-probs' temperature"},
            "distillkit_temperature": {"anyOf": [{"type": "null"}, temperature]},
        },
    }
    completions_answer = {
        "type": "object", "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {"id": {"type": "string"}, "object": {"const": "text_completion"},
                       "created": {"type": "integer"}, "model": {"type": "string"},
                       "choices": {"type": "array", "items": {"type": "object", "required": ["index", "text"]}},
                       "usage": {"type": "object"}},
    }
    trl_request = {
        "type": "object", "required": ["sequences", "prompt_lengths"],
        "properties": {
            "sequences": sequences, "prompt_lengths": prompt_lengths,
            "top_logprobs": {"type": "integer", "minimum": 0, "maximum": limits.max_k,
                             "default": min(DEFAULT_TOP_LOGPROBS, limits.max_k)},
            "temperature": {**temperature, "default": 1.0},
            "response_format": {"enum": ["json", "binary"], "default": "json"},
        },
    }
    nullable_str = {"type": ["string", "null"]}
    trl_answer = {
        "type": "object",
        "properties": {"logprobs": {"type": ["array", "null"]}, "logprob_token_ids": {"type": ["array", "null"]},
                       "logprobs_b64": nullable_str, "token_ids_b64": nullable_str,
                       "actual_logprobs_b64": nullable_str, "actual_token_ids_b64": nullable_str,
                       "shape": {"type": ["array", "null"], "items": {"type": "integer"}},
                       "completion_lengths": {"type": ["array", "null"], "items": {"type": "integer"}}},
    }
    binary = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    document = {
        "openapi": "3.1.0",
        "info": {"title": "distillkit teacher", "version": "1",
                 "description": "Teacher log-probs for distillation. See docs/serve-teacher.md."},
        "paths": {
            "/health": {"get": {"summary": "liveness", "security": [], "responses": {"200": {
                "description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/info": {"get": get("the model, its vocabulary and this server's limits", {"type": "object"})},
            "/metrics": {"get": get("batching counters", {"type": "object"})},
            "/v1/models": {"get": get("the served model, OpenAI style", {"type": "object"})},
            "/v1/score": {"post": post("top-k log-probs of the completion positions (JSON form; the binary form is "
                                       "in docs/serve-teacher.md)", score_request,
                                       {"application/json": {"schema": score_answer}, **binary})},
            "/v1/completions": {"post": post("an OpenAI/vLLM completions subset with prompt_logprobs",
                                             completions_request, {"application/json": {"schema": completions_answer}},
                                             {"404": {"description": "an unknown model", "content": {
                                                 "application/json": {"schema": error}}}})},
            "/get_sequence_logprobs/": {"post": post("TRL's teacher endpoint (trl vllm-serve up to TRL 1.9.2)",
                                                     trl_request, {"application/json": {"schema": trl_answer}})},
        },
        "components": {"schemas": {"Error": {
            "type": "object", "required": ["error"],
            "properties": {"error": {"type": "object", "required": ["message", "type", "code"], "properties": {
                "message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": "integer"}}}},
        }}},
    }
    if secured:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document

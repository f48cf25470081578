"""Settings: parsed once from the environment, every bad value named."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from jobs.settings import ApiKey, RateLimit, SettingsError, load_settings


class TestDefaults:
    def test_empty_environment_gives_documented_defaults(self) -> None:
        """With nothing set, the service runs on local Redis with the offline demo model."""
        settings = load_settings({}, env_file=None)

        assert settings.redis.url == "redis://127.0.0.1:6379/0"
        assert settings.llm.is_demo and settings.llm.model_name == "agentfarm-demo-offline"
        assert settings.task_ttl_s == 86_400
        assert settings.kinds["research"].rate_limit == RateLimit(10, 60)
        assert settings.kinds["research"].max_attempts == 4
        assert settings.kinds["research"].retry_backoff_s == 60
        assert settings.kinds["swot"].rate_limit == RateLimit(5, 60)
        assert settings.kinds["swot"].max_attempts == 3
        assert settings.api.api_keys == ()


class TestParsing:
    def test_values_are_parsed(self) -> None:
        """Every documented variable is read and typed."""
        settings = load_settings(
            {
                "AGENTFARM_REDIS_URL": "redis://:pw@redis:6379/2",
                "AGENTFARM_API_KEYS": "acme:s3cret-key, beta:t0ken-key2",
                "AGENTFARM_LLM_MODEL": "openai/gpt-4o-mini",
                "AGENTFARM_LLM_BASE_URL": "http://llm.local:8080/v1",
                "AGENTFARM_LLM_API_KEY": "sk-test",
                "AGENTFARM_CORS_ORIGINS": "https://a.example, https://b.example",
                "AGENTFARM_TASK_TTL_S": "3600",
                "AGENTFARM_MAX_BODY_BYTES": "2048",
                "AGENTFARM_SWOT_RATE_LIMIT": "7/hour",
                "AGENTFARM_SWOT_MAX_ATTEMPTS": "5",
                "AGENTFARM_TECHNICAL_REVIEW_TIMEOUT_S": "900",
                "AGENTFARM_WORKER_CONCURRENCY": "16",
            },
            env_file=None,
        )

        assert settings.redis.url == "redis://:pw@redis:6379/2"
        assert [k.tenant for k in settings.api.api_keys] == ["acme", "beta"]
        assert settings.llm.model == "openai/gpt-4o-mini" and not settings.llm.is_demo
        assert settings.llm.base_url == "http://llm.local:8080/v1" and settings.llm.api_key == "sk-test"
        assert settings.api.cors_origins == ("https://a.example", "https://b.example")
        assert settings.task_ttl_s == 3600 and settings.api.max_body_bytes == 2048
        assert settings.kinds["swot"].rate_limit == RateLimit(7, 3600)
        assert settings.kinds["swot"].max_attempts == 5
        assert settings.kinds["technical_review"].timeout_s == 900
        assert settings.worker.concurrency == 16

    def test_api_keys_are_kept_hashed(self) -> None:
        """Settings hold only a digest of each API key, never the key itself."""
        settings = load_settings({"AGENTFARM_API_KEYS": "acme:s3cret-key"}, env_file=None)

        assert settings.api.api_keys == (ApiKey("acme", ApiKey.digest("s3cret-key")),)
        assert "s3cret-key" not in repr(settings)

    def test_env_file_is_read_and_environment_wins(self, tmp_path: Path) -> None:
        """A .env file fills in settings; a variable in the environment overrides it."""
        env_file = tmp_path / ".env"
        env_file.write_text("AGENTFARM_TASK_TTL_S=100\nAGENTFARM_WORKER_CONCURRENCY=3\n")

        settings = load_settings({"AGENTFARM_WORKER_CONCURRENCY": "9"}, env_file=env_file)

        assert settings.task_ttl_s == 100
        assert settings.worker.concurrency == 9


class TestErrors:
    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("AGENTFARM_TASK_TTL_S", "abc"),
            ("AGENTFARM_TASK_TTL_S", "-5"),
            ("AGENTFARM_REDIS_URL", "http://redis"),
            ("AGENTFARM_LLM_MODEL", "gpt-4o"),
            ("AGENTFARM_LLM_BASE_URL", "not a url"),
            ("AGENTFARM_RESEARCH_RATE_LIMIT", "10 per minute"),
            ("AGENTFARM_RESEARCH_RATE_LIMIT", "0/minute"),
            ("AGENTFARM_SWOT_MAX_ATTEMPTS", "0"),
            ("AGENTFARM_INVESTMENT_SOFT_TIMEOUT_S", "nan"),
            ("AGENTFARM_WORKER_CONCURRENCY", "1000"),
            ("AGENTFARM_LOG_FORMAT", "xml"),
            ("AGENTFARM_API_KEYS", "acme"),
            ("AGENTFARM_API_KEYS", "acme:short"),
            ("AGENTFARM_API_KEYS", "acme:same-key-1,beta:same-key-1"),
        ],
    )
    def test_bad_value_names_the_variable(self, name: str, value: str) -> None:
        """A bad value stops start-up with a message naming the variable and what it expects."""
        with pytest.raises(SettingsError) as error:
            load_settings({name: value}, env_file=None)

        assert len(error.value.problems) == 1
        assert error.value.problems[0].startswith(f"{name}: expected ")

    def test_all_problems_are_reported_at_once(self) -> None:
        """Several bad values are all listed, so one restart fixes them all."""
        with pytest.raises(SettingsError) as error:
            load_settings({"AGENTFARM_TASK_TTL_S": "x", "AGENTFARM_MAX_BODY_BYTES": "y"}, env_file=None)

        assert len(error.value.problems) == 2
        assert "AGENTFARM_TASK_TTL_S" in str(error.value) and "AGENTFARM_MAX_BODY_BYTES" in str(error.value)

    def test_secrets_are_not_echoed(self) -> None:
        """An invalid API key list is reported without printing the keys."""
        with pytest.raises(SettingsError) as error:
            load_settings({"AGENTFARM_API_KEYS": "acme:tiny"}, env_file=None)

        assert "tiny" not in str(error.value)

    def test_soft_timeout_must_not_exceed_hard_timeout(self) -> None:
        """A soft limit above the hard limit is refused (it could never apply)."""
        with pytest.raises(SettingsError, match="AGENTFARM_RESEARCH_SOFT_TIMEOUT_S: must not exceed"):
            load_settings(
                {"AGENTFARM_RESEARCH_SOFT_TIMEOUT_S": "100", "AGENTFARM_RESEARCH_TIMEOUT_S": "50"}, env_file=None
            )


class TestUnknownVariables:
    def test_misspelled_variable_stops_start_up_with_a_suggestion(self) -> None:
        """A typo in an AGENTFARM_ variable is refused and the closest real name is suggested."""
        with pytest.raises(SettingsError) as raised:
            load_settings({"AGENTFARM_WORKER_CONCURENCY": "8"}, env_file=None)
        assert "AGENTFARM_WORKER_CONCURENCY" in str(raised.value)
        assert "did you mean AGENTFARM_WORKER_CONCURRENCY?" in str(raised.value)

    def test_misspelled_variable_in_env_file_is_refused(self, tmp_path: Path) -> None:
        """A typo in .env is caught the same way as one in the environment."""
        env_file = tmp_path / ".env"
        env_file.write_text("AGENTFARM_LLM_MODLE=openai/gpt-4o-mini\n")
        with pytest.raises(SettingsError, match="did you mean AGENTFARM_LLM_MODEL"):
            load_settings({}, env_file=env_file)

    def test_client_variables_and_other_prefixes_are_accepted(self) -> None:
        """The CLI's own variables and variables of other programs do not stop the service."""
        settings = load_settings(
            {"AGENTFARM_URL": "http://127.0.0.1:8000", "AGENTFARM_API_KEY": "k" * 10, "OTHER_THING": "1"},
            env_file=None,
        )
        assert settings.worker.concurrency == 4


class TestSections:
    def test_settings_are_nested_by_area(self) -> None:
        """Each area's variables land in its own section: AGENTFARM_WORKER_* in worker, AGENTFARM_LLM_* in llm."""
        settings = load_settings(
            {"AGENTFARM_WORKER_LEASE_S": "2.5", "AGENTFARM_LLM_RPM": "30", "AGENTFARM_LOG_LEVEL": "DEBUG"},
            env_file=None,
        )
        assert settings.worker.lease_s == 2.5
        assert settings.llm.rpm == 30
        assert settings.log.level == "debug"

    @pytest.mark.parametrize(
        ("section", "values"),
        [
            ("crews.llm:LLMConfig", {"max_iter": 100}),
            ("jobs.settings:WorkerConfig", {"concurrency": 0}),
            ("jobs.settings:ApiConfig", {"max_body_bytes": -1}),
        ],
    )
    def test_bounds_hold_when_a_section_is_built_in_code(self, section: str, values: dict[str, int]) -> None:
        """The bounds declared on a field are enforced however the section is built, not only from the environment."""
        module, _, name = section.partition(":")
        struct = getattr(importlib.import_module(module), name)
        with pytest.raises(ValueError, match=next(iter(values))):
            struct(**values)

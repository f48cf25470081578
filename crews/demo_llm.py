"""The offline demo model: a crewai LLM that writes canned text without a network.

It goes through the same crew, agents, tasks, hooks and usage accounting as a
real model, so a newcomer sees the real flow; only the words are canned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crewai.llms.base_llm import BaseLLM
from pydantic import BaseModel

from crews.llm import DEMO_MODEL


@dataclass(frozen=True)
class _Texts:
    notes: str
    title: str
    summary: str
    sections: tuple[tuple[str, str], ...]


_TEXTS = {
    "en": _Texts(
        notes=(
            "Thought: I now can give a great answer\n"
            "Final Answer: Notes on {subject} (offline demo model, not a real analysis):\n"
            "- {subject} is the subject of this demo run.\n"
            "- A configured LLM would research it here; set AGENTFARM_LLM_MODEL to get one.\n"
            "- This step was done by the {role}."
        ),
        title="{subject}: demo report",
        summary=(
            "This report was written by the offline demo model, so it contains no real analysis "
            "of {subject}. Configure AGENTFARM_LLM_MODEL to have a real crew write it."
        ),
        sections=(
            ("Overview", "The crew received the subject **{subject}** and ran every step of its plan."),
            ("Findings", "- Each agent's step ran through the real crew.\n- Usage was recorded per call."),
            ("Next steps", "Set `AGENTFARM_LLM_MODEL` (and a key) for real reports."),
        ),
    ),
    "ru": _Texts(
        notes=(
            "Thought: I now can give a great answer\n"
            "Final Answer: Заметки по теме «{subject}» (офлайн-демомодель, не настоящий анализ):\n"
            "- Тема «{subject}» выбрана для демонстрационного запуска.\n"
            "- Настоящая модель провела бы здесь исследование; задайте AGENTFARM_LLM_MODEL.\n"
            "- Этот шаг выполнил агент «{role}»."
        ),
        title="{subject}: демонстрационный отчёт",
        summary=(
            "Этот отчёт написан офлайн-демомоделью, поэтому в нём нет настоящего анализа темы "
            "«{subject}». Задайте AGENTFARM_LLM_MODEL, чтобы отчёт написала настоящая команда агентов."
        ),
        sections=(
            ("Обзор", "Команда получила тему **{subject}** и выполнила все шаги своего плана."),
            ("Выводы", "- Каждый шаг агента прошёл через настоящую команду.\n- Расход токенов учтён."),
            ("Что дальше", "Задайте `AGENTFARM_LLM_MODEL` (и ключ), чтобы получать настоящие отчёты."),
        ),
    ),
}


class DemoLLM(BaseLLM):
    """Canned answers in the job's language, about the job's subject."""

    subject: str = ""
    language: str = "en"

    def __init__(self, *, subject: str, language: str) -> None:
        super().__init__(model=DEMO_MODEL, provider="agentfarm")
        self.subject = subject
        self.language = language

    def call(
        self,
        messages: Any,
        tools: Any = None,
        callbacks: Any = None,
        available_functions: Any = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: type[BaseModel] | None = None,
    ) -> str | Any:
        text = _TEXTS.get(self.language, _TEXTS["en"])
        role = getattr(from_agent, "role", "agent")
        if response_model is not None and "queries" in response_model.model_fields:
            # The sources stage's query plan (only with a search backend set): the subject itself.
            plan = response_model.model_validate({"queries": [self.subject]})
            answer_plan: BaseModel = plan
            self._track_token_usage_internal({"prompt_tokens": 1, "completion_tokens": len(self.subject.split())})
            return answer_plan
        if response_model is not None:
            report = response_model.model_validate(
                {
                    "title": text.title.format(subject=self.subject),
                    "summary": text.summary.format(subject=self.subject),
                    "sections": [{"heading": h, "body": b.format(subject=self.subject)} for h, b in text.sections],
                }
            )
            answer: str | BaseModel = report
            completion = report.model_dump_json()
        else:
            completion = text.notes.format(subject=self.subject, role=role)
            answer = completion
        prompt = messages if isinstance(messages, str) else " ".join(str(m.get("content", "")) for m in messages)
        self._track_token_usage_internal(
            {"prompt_tokens": len(prompt.split()), "completion_tokens": len(completion.split())}
        )
        return answer

    def supports_function_calling(self) -> bool:
        return False

    def get_context_window_size(self) -> int:
        return 128_000

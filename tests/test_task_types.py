"""tier=auto reads what a request asks for, not only how it is written: coding asked in
plain words goes to standard or premium, chit-chat and lookups to economy. The tables run
through the real classifier at the default thresholds and weights."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.decide.classifier import assess, signals_of
from proxy.decide.policy import ClassifierSettings

# Plain-language coding requests, no code pasted: what a user of a coding tool types.
CODING = [
    "Write a function that checks whether a number is prime.",
    "Can you make me a script that renames all the photos in a folder by the date they were taken?",
    "How do I reverse a linked list in Java?",
    "Implement binary search over a sorted array and tell me its running time.",
    "My React component re-renders every time I type in the input box. How do I stop that?",
    "Build a small REST API in Flask with endpoints to create, list and delete notes.",
    "Write a SQL query that returns the five customers with the highest total order value.",
    "I need a bash script that backs up my home directory to an external drive every night.",
    "Refactor my user service so that database access lives in its own module.",
    "Create an HTML page with a form that validates an email address before it is submitted.",
    "Why does my Python program crash with a recursion error when the list gets large?",
    "Write a regex that matches US phone numbers written in several different formats.",
    "Implement an LRU cache with get and put that both run in constant time.",
    "Write unit tests for a function that parses dates in ISO 8601 format.",
    "Rewrite my Node callback code so it uses async and await instead.",
    "How can I speed up a pandas merge of two tables with two million rows each?",
    "Write a program that reads a text file and counts how often each word appears.",
    "Design a database schema for a library with books, members and loans.",
    "Write a Go server that serves static files over HTTP and logs every request.",
    "Make a tic-tac-toe game in JavaScript that runs in the browser.",
    "Implement Dijkstra's shortest path algorithm for a weighted graph.",
    "Help me debug why my Docker container exits right after it starts.",
    "Write a Rust function that splits a string on commas and trims each piece.",
    "Create a command line tool that converts temperatures from Celsius to Fahrenheit.",
    "Add pagination to my Django view that lists blog posts.",
    "Write a function to merge two sorted arrays into one sorted array.",
    "Please review my plan: I store user passwords hashed with MD5 in my login system.",
    "Write a C++ class for a matrix that supports addition and multiplication.",
    "Generate a Kotlin data class for a user with a name, an email and an age.",
    "Set up a GitHub Actions workflow that runs my tests on every push.",
    "Explain what a closure is in JavaScript, with an example.",
    "Scrape the headlines from a news website and save them to a spreadsheet.",
    "Write a function that flattens a nested dictionary into dot-separated keys.",
    "My loop that sums the squares of a million numbers in Python is slow; make it faster.",
    "Create a TypeScript interface for an API response with nested objects.",
    "How should I handle exceptions when reading files in Java?",
]

# Chit-chat, greetings and quick factual lookups.
SMALL = [
    "hi!",
    "Hello, how are you today?",
    "Thanks, that was really helpful!",
    "Good morning!",
    "Tell me a joke about cats.",
    "What is the capital of Australia?",
    "Who wrote Pride and Prejudice?",
    "When did World War II end?",
    "What's the weather usually like in Lisbon in May?",
    "How tall is Mount Everest?",
    "Translate 'good night' into Spanish.",
    "What does the word ephemeral mean?",
    "Give me a synonym for happy.",
    "Recommend a good movie for a rainy weekend.",
    "What's your favorite color?",
    "Who is the president of France?",
    "Where is the Eiffel Tower?",
    "How do you spell necessary?",
    "lol that's funny",
    "Bye, have a nice day!",
    "What year did the Titanic sink?",
    "Which planet is closest to the sun?",
    "What time zone is Tokyo in?",
    "How do you say hello in Japanese?",
    "Define photosynthesis in one sentence.",
    "What is the boiling point of water?",
    "How many legs does a spider have?",
    "Who painted the Mona Lisa?",
    "Nice to meet you!",
    "What's a good name for a goldfish?",
]


def chat(text: str) -> dict[str, Any]:
    return {"model": "auto", "tier": "auto", "messages": [{"role": "user", "content": text}]}


def tier_of(text: str) -> str:
    return ClassifierSettings().tier_for(assess(chat(text)).score)


def test_the_tables_are_as_large_and_varied_as_the_goal_needs() -> None:
    assert len(CODING) >= 30 and len(set(CODING)) == len(CODING)
    assert len(SMALL) >= 20 and len(set(SMALL)) == len(SMALL)
    assert not any("```" in t or "def " in t or "{" in t for t in CODING)  # prose, no code


def test_most_plain_language_coding_requests_go_to_standard_or_premium() -> None:
    tiers = {text: tier_of(text) for text in CODING}
    missed = [text for text, tier in tiers.items() if tier == "economy"]
    assert len(missed) <= 0.2 * len(CODING), f"{len(missed)} went to economy: {missed}"


def test_most_chit_chat_and_lookups_go_to_economy() -> None:
    tiers = {text: tier_of(text) for text in SMALL}
    missed = [f"{text} -> {tier}" for text, tier in tiers.items() if tier != "economy"]
    assert len(missed) <= 0.2 * len(SMALL), f"{len(missed)} did not: {missed}"


@pytest.mark.parametrize(
    ("text", "signal"),
    [
        pytest.param("Implement a function that parses a config file", "code_task", id="code"),
        pytest.param(
            "A baker sells 12 loaves at $3 each. How much money does she make?",
            "math_task",
            id="math-word-problem",
        ),
        pytest.param(
            "Extract every date and amount from this invoice as a table", "extraction", id="extract"
        ),
        pytest.param("Who discovered penicillin?", "lookup", id="lookup"),
        pytest.param("hey, thanks a lot!", "simple", id="chit-chat"),
    ],
)
def test_task_type_signals_read_words_not_syntax(text: str, signal: str) -> None:
    assert signals_of(chat(text))[signal] > 0.3
    assert signals_of(chat("The sky over the field was grey."))[signal] < 0.3


def test_coding_in_prose_outranks_the_same_length_of_chit_chat() -> None:
    code = assess(chat("Write a Python function that removes duplicates from a list."))
    talk = assess(chat("Hello there, I hope you are having a really lovely day today."))
    assert code.score > talk.score
    assert "code_task" in code.explain()


def test_a_longer_word_problem_reaches_standard_at_least() -> None:
    text = (
        "Tom has twice as many marbles as Sam. Sam gives 4 marbles to Ann, who then has half "
        "as many as Tom. If Ann started with 6 marbles, how many marbles does Tom have?"
    )
    assert tier_of(text) in ("standard", "premium")


def test_a_list_to_extract_from_counts_less_as_parts_than_a_list_of_questions() -> None:
    lines = "\n".join(f"{i}. Order {i} shipped on 2024-03-{i:02d} to Berlin" for i in range(1, 9))
    extract = signals_of(chat("Extract the order number and date of each line as JSON.\n" + lines))
    plain = signals_of(chat("Look at the order number and date of each line.\n" + lines))
    assert extract["extraction"] > 0.5 > plain["extraction"]
    assert extract["multi_part"] < plain["multi_part"]

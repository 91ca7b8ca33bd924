"""A user-defined intermediate task, registered from outside the package (``--plugin``).

It asks whether a sentence is a question; its verbalizer deliberately holds a word that the
tiny tokenizer splits into several tokens, so the teacher pass must refuse it.
"""

from collections.abc import Iterator

from smash.precompute.tasks import TaskExample, register_task


@register_task("odd-words")
class OddWordsTask:
    template = "*cls**sent_0*_Question?*mask*.*sep+*"
    max_length = 64
    verbalizer = ("Yes", "Nonetheless")

    def __init__(self, splitter, **options):
        self.splitter = splitter

    def examples(self, corpus, seed: int) -> Iterator[TaskExample]:
        for doc in corpus:
            for sentence in self.splitter.split(doc):
                yield TaskExample((sentence,), int(sentence.endswith("?")))

    def keep(self, verbalizer_logprobs):
        return None

    def config(self) -> dict:
        return {}

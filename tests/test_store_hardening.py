"""What adversarial use of a store found: manifests that lie, servers that stall, tokenizers
that tokenize differently. Each is refused or reported with a message naming what is wrong."""

import functools
import http.server
import json
import math
import shutil
import threading
import time

import pytest
from smash.store.cli import main, verify_store
from smash.store.errors import FingerprintMismatch, ManifestError, ShardError
from smash.store.fingerprint import tokenizer_fingerprint
from smash.store.manifest import finalize_store, load_manifest
from smash.store.reader import StoreDataset
from test_store import make_examples, write_store

SAMPLED = {
    "mode": "sampled",
    "samples": 16,
    "proposal_temperature": 1.0,
    "estimator": "unbiased",
    "seed": 0,
}


@pytest.fixture
def store(tmp_path):
    write_store(tmp_path, make_examples(60, k=16, seed=3), max_samples=20, k=16)
    finalize_store(tmp_path)
    return tmp_path


def edit_manifest(store, edit):
    path = store / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def refused_everywhere(store, capsys, message):
    """load_manifest, the reader and both CLI commands refuse the manifest alike."""
    with pytest.raises(ManifestError, match=message):
        load_manifest(store)
    with pytest.raises(ManifestError, match=message):
        StoreDataset(store)
    for command in ("verify", "inspect"):
        assert main([command, str(store)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "manifest.json" in err, err


def test_a_shard_listed_twice_is_refused(store, capsys):
    edit_manifest(store, lambda m: m["shards"].append(m["shards"][0]))
    refused_everywhere(store, capsys, r"shards\[3\]: 'shard-000000.tar' is listed more than once")


@pytest.mark.parametrize("name", ["../outside.tar", "/etc/passwd", "sub/shard.tar", "..", ""])
def test_shard_names_must_be_plain_file_names(store, capsys, name):
    outside = store.parent / "outside.tar"
    shutil.copy(store / "shard-000001.tar", outside)
    edit_manifest(store, lambda m: m["shards"][1].update(name=name))
    refused_everywhere(store, capsys, r"shards\[1\].name.*plain file names")


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda m: m["shards"][0].update(samples="20"),
            r"'shards\[0\].samples' is \"20\" \(a string\)",
        ),
        (lambda m: m["shards"][2].update(bytes=-1), r"'shards\[2\].bytes' is -1; expected >= 0"),
        (lambda m: m["shards"][0].update(samples=True), r"'shards\[0\].samples' is true"),
        (lambda m: m["shards"][0].update(sha256="abc"), r"'shards\[0\].sha256' is 'abc'"),
        (lambda m: m["shards"][0].pop("bytes"), r"missing field 'shards\[0\].bytes'"),
        (lambda m: m.update(k="16"), r"field 'k' is \"16\" \(a string\)"),
        (lambda m: m.update(k=10**6), r"field 'k' is 1000000, more than tokenizer.vocab_size"),
        (lambda m: m["tokenizer"].update(vocab_size=1.5), r"'tokenizer.vocab_size' is 1.5"),
        (
            lambda m: m.update(producer=[]),
            r"field 'producer' is \[\] \(a list\); expected an object",
        ),
        (lambda m: m.update(shards=[]), r"field 'shards' is empty: the store holds no shard"),
        (lambda m: m.update(shards={}), r"field 'shards' is \{\} \(an object\); expected a list"),
        (lambda m: m["targets"].update(mode="beam"), r"'targets.mode' is 'beam'; expected"),
        (
            lambda m: m["targets"].update(samples=16),
            r"field 'targets' has keys \['mode', 'samples'\]; topk targets have \['mode'\]",
        ),
        (
            lambda m: m.update(targets={**SAMPLED, "samples": 12}),
            r"'targets.samples' is 12 but 'k' is 16",
        ),
        (
            lambda m: m.update(targets={**SAMPLED, "proposal_temperature": 0.0}),
            r"'targets.proposal_temperature' is 0.0; expected a finite number > 0",
        ),
        (
            lambda m: m.update(targets={**SAMPLED, "proposal_temperature": math.inf}),
            r"'targets.proposal_temperature' is Infinity; expected a finite number > 0",
        ),
        (
            lambda m: m.update(targets={**SAMPLED, "proposal_temperature": math.nan}),
            r"'targets.proposal_temperature' is NaN; expected a finite number > 0",
        ),
        (
            lambda m: m.update(targets={**SAMPLED, "estimator": "self-normalised"}),
            r"'targets.estimator' is 'self-normalised'; this version of smash knows 'unbiased'",
        ),
        (
            lambda m: m.update(format_version=2),
            r"field 'targets' appears in format version 2; it is new in 3",
        ),
    ],
)
def test_manifest_fields_are_checked_and_named(store, capsys, edit, message):
    edit_manifest(store, edit)
    refused_everywhere(store, capsys, message)


def test_verify_names_chunks_of_other_targets_than_the_manifest(store, capsys):
    edit_manifest(store, lambda m: m.update(targets=SAMPLED))
    assert main(["verify", str(store)]) == 1
    err = capsys.readouterr().err
    assert err.count("holds topk targets, the manifest records sampled") == 3


def test_verify_compares_each_chunk_with_the_manifest(store, capsys):
    edit_manifest(store, lambda m: m.update(k=8))
    assert main(["verify", str(store)]) == 1
    err = capsys.readouterr().err
    assert err.count("holds k=16, the manifest records k=8") == 3
    with pytest.raises(ShardError, match="holds k=16, the manifest records k=8"):
        list(StoreDataset(store))


def test_verify_catches_a_vocabulary_that_does_not_match(store, capsys):
    edit_manifest(store, lambda m: m["tokenizer"].update(vocab_size=1000))
    assert main(["verify", str(store)]) == 1
    assert "written for a vocabulary of 50265, the manifest records 1000" in capsys.readouterr().err


# -------------------------------------------------------------------- reads that stall


class _StallingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the store, but sends only the headers and the first bytes of the files named in
    ``stall`` and then nothing until the test ends (a server stopped mid-response)."""

    stall: tuple[str, ...] = ()
    release: threading.Event

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        if name not in self.stall:
            return super().do_GET()
        data = (self.server.root / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[:100])
        self.wfile.flush()
        self.release.wait(60)


@pytest.fixture
def stalling_server(store):
    release = threading.Event()
    servers = []

    def serve(*stall):
        handler = type("H", (_StallingHandler,), {"stall": stall, "release": release})
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(store))
        )
        server.root = store
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    release.set()
    for server in servers:
        server.shutdown()


def finishes(fn, within=30.0):
    """Run ``fn`` in a thread; its result or exception, or a failure if it hangs."""
    box = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(within)
    assert not thread.is_alive(), f"still hanging after {within} s"
    return box, time.monotonic() - started


def test_a_stalled_shard_fails_verify_naming_it(stalling_server):
    url = stalling_server("shard-000001.tar")
    box, seconds = finishes(lambda: verify_store(url, stall_timeout=1.0))
    assert box["result"] == [
        ("shard-000001.tar", "stalled: no data arrived for 1 s (the stall timeout)")
    ]
    assert seconds < 20


def test_a_stalled_shard_stops_the_reader_with_a_shard_error(stalling_server):
    url = stalling_server("shard-000000.tar")
    box, _ = finishes(lambda: list(StoreDataset(url, shuffle=False, stall_timeout=1.0)))
    assert isinstance(box.get("error"), ShardError)
    assert f"{url}/shard-000000.tar: stalled" in str(box["error"])


def test_a_stalled_manifest_is_a_manifest_error(stalling_server, capsys):
    url = stalling_server("manifest.json")
    box, _ = finishes(lambda: main(["verify", url, "--stall-timeout", "1"]))
    assert box["result"] == 2
    assert "manifest.json: stalled: no data arrived for 1 s" in capsys.readouterr().err


def test_a_stalled_pipe_command_is_killed(store):
    slow = StoreDataset(store, shard_url="pipe:sleep 30; cat {name}", stall_timeout=1.0)
    box, seconds = finishes(lambda: list(slow))
    assert "stalled: no data arrived for 1 s" in str(box["error"])
    assert seconds < 20


def test_a_slow_source_that_keeps_sending_is_not_cut_off(store):
    # 20 small writes 0.1 s apart: 2 s in all, never 1 s without a byte
    dribble = (
        "pipe:python3 -c \"import sys,time;d=open('{}','rb').read();n=len(d)//20+1\n"
        'for i in range(0,len(d),n): sys.stdout.buffer.write(d[i:i+n]); sys.stdout.flush(); time.sleep(0.1)"'
    )
    slow = StoreDataset(store, shard_url=dribble.format(store / "{name}"), stall_timeout=1.0)
    assert len(list(slow)) == 60


def test_a_failing_pipe_command_names_its_status(store):
    with pytest.raises(ShardError, match=r"exited with status 3: gone"):
        list(StoreDataset(store, shard_url="pipe:echo gone >&2; exit 3"))


def test_an_unsupported_scheme_is_refused_with_advice():
    with pytest.raises(ManifestError, match=r"unsupported location scheme gs://.*pipe:COMMAND"):
        load_manifest("gs://bucket/store")


# --------------------------------------------------------------------- tokenizer settings


def test_the_fingerprint_covers_settings_that_change_ids(tiny, tiny_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    flipped = tmp_path / "flipped"
    shutil.copytree(tiny["tokenizer"], flipped)
    config = json.loads((flipped / "tokenizer_config.json").read_text())
    config["add_prefix_space"] = not config.get("add_prefix_space", False)
    (flipped / "tokenizer_config.json").write_text(json.dumps(config))
    other = AutoTokenizer.from_pretrained(flipped)
    assert other("Hello")["input_ids"] != tiny_tokenizer("Hello")["input_ids"]
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tiny_tokenizer)

    write_store(tmp_path / "s", make_examples(5, vocab=len(tiny_tokenizer)),
                fp=tokenizer_fingerprint(tiny_tokenizer))  # fmt: skip
    finalize_store(tmp_path / "s")
    assert StoreDataset(tmp_path / "s", tokenizer=tiny_tokenizer).num_samples == 5
    with pytest.raises(FingerprintMismatch, match="tokenizer mismatch"):
        StoreDataset(tmp_path / "s", tokenizer=other)


def test_the_fingerprint_ignores_names_and_padding_side(tiny, tmp_path):
    from transformers import AutoTokenizer

    copy = tmp_path / "renamed"
    shutil.copytree(tiny["tokenizer"], copy)
    a = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    b = AutoTokenizer.from_pretrained(copy, padding_side="left")
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(b)

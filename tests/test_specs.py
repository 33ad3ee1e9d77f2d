"""The one spec grammar: every setting's errors name the offending part and its grammar."""

from __future__ import annotations

import numpy as np
import pytest

from webfl.core.aggregation import get_aggregator, parse_norm_bound
from webfl.core.codecs import get_codec
from webfl.core.downlink import Downlink, ModelChain, get_downlink
from webfl.core.server_opt import get_server_opt
from webfl.core.specs import Params, Spec, SpecError, parse_chain, parse_params, parse_spec

G = "test grammar"


def test_specs_split_into_name_unnamed_and_named_parameters():
    assert parse_spec(" Clipped : 5 , X=2 ", what="w", grammar=G) == Spec("clipped", ("5",), (("x", "2"),))
    assert parse_spec("median", what="w", grammar=G) == Spec("median")
    assert parse_params("5,x=3", what="w", grammar=G) == Spec("", ("5",), (("x", "3"),))
    assert parse_chain("topk:0.1+Q8", what="w", grammar=G) == (Spec("topk", ("0.1",)), Spec("q8"))


@pytest.mark.parametrize(
    "text, part, why",
    [("", "''", "no name"), (":5", "':5'", "no name"), ("a:", "an empty parameter", "stray comma"),
     ("a:1,,2", "an empty parameter", "stray"), ("a:k=1,2", "2", "after named"), ("a:k=", "k=", "key=value"),
     ("a:=1", "=1", "key=value"), ("a:k=1,k=2", "k", "twice"), ("a" * 201, "201 characters", "longer"),
     (None, "NoneType", "not a string"), (7, "int", "not a string")],
)
def test_syntax_errors_name_the_part(text, part, why):
    with pytest.raises(SpecError) as err:
        parse_spec(text, what="thing spec", grammar=G)
    assert err.value.part == part and why in err.value.why
    assert str(err.value).startswith("invalid thing spec") and str(err.value).endswith(f"grammar: {G}")


def test_params_read_typed_values_in_range_and_refuse_leftovers():
    p = Params(parse_spec("r:0.5,n=7,z=1", what="w", grammar=G), "r:0.5,n=7,z=1", what="w", grammar=G, positional=("a",))
    assert p.number("a", 0, 1) == 0.5 and p.integer("n", 1, 10) == 7 and p.number("missing", 0, 1) is None
    with pytest.raises(SpecError, match="r has no parameter z"):
        p.done()
    for text, key, read in [("r:a=2", "a", lambda q: q.number("a", 0, 1)), ("r:a=nan", "a", lambda q: q.number("a", 0, 1)),
                            ("r:n=1.5", "n", lambda q: q.integer("n", 0, 9)), ("r:n=" + "9" * 30, "n", lambda q: q.integer("n", 0, 9)),
                            ("r:a=0", "a", lambda q: q.number("a", 0, 1, open_lo=True))]:
        q = Params(parse_spec(text, what="w", grammar=G), text, what="w", grammar=G)
        with pytest.raises(SpecError) as err:
            read(q)
        assert err.value.part.startswith(f"{key}=")
    with pytest.raises(SpecError, match="takes no unnamed"):
        Params(parse_spec("r:1", what="w", grammar=G), "r:1", what="w", grammar=G)
    with pytest.raises(SpecError, match="given twice"):
        Params(parse_spec("r:1,a=2", what="w", grammar=G), "r:1,a=2", what="w", grammar=G, positional=("a",))


@pytest.mark.parametrize(
    "parse, text, part",
    [
        (get_codec, "topk:2+q8", "f=2"), (get_codec, "q8:3", "3"), (get_codec, "rot+fp16", "rot"),
        (get_codec, "q3", "q3"), (get_codec, "topk", "topk"),
        (get_aggregator, "trimmed_mean:0.7", "beta=0.7"), (get_aggregator, "clipped:window=0", "window=0"),
        (parse_norm_bound, "x=-2", "x=-2"),
        (get_downlink, "delta:q3", "q3"), (get_downlink, "delta:topk:1e9", "f=1e9"), (get_downlink, "delta", "delta"),
        (get_downlink, "gzip", "gzip"), (get_downlink, "fp16:1", "1"),
        (get_server_opt, "fedadam:tau=0", "tau=0"), (get_server_opt, "fedavgm:momentum=1", "momentum=1"),
        (get_server_opt, "fedavg:lr=1e400", "lr=1e400"), (get_server_opt, "fedavg:beta=2", "beta=2"),
        (get_server_opt, "adam", "adam"), (get_server_opt, "fedavg:2", "2"),
    ],
)
def test_every_setting_names_the_offending_part(parse, text, part):
    with pytest.raises(SpecError) as err:
        parse(text)
    assert err.value.part == part and "grammar" in str(err.value)


def test_downlinks_are_typed_and_the_chain_takes_them_parsed():
    parsed = get_downlink(" Delta:ROT+q4 ")
    assert parsed.kind == "delta" and parsed.codec.stages == ("rot", "q4")
    assert get_downlink("delta:rot+q4").spec == "delta:rot+q4" and get_downlink("none") == Downlink("none")
    assert get_downlink("fp16").codec.spec == "fp16"
    params = np.linspace(-1, 1, 300, dtype=np.float32)
    chain = ModelChain(np.zeros(300, np.float32), 0)
    step = chain.prepare(params, 1, get_downlink("delta:q8"), np.random.default_rng(3))
    assert step.base_version == 0 and chain.version == 0  # prepared, not yet advanced
    assert chain.advance(step) == step.frame and chain.version == 1


def test_server_optimizer_specs_keep_their_canonical_form():
    assert get_server_opt(" FedAdam:lr=0.1, tau=0.01 ").spec == "fedadam:lr=0.1,b1=0.9,b2=0.99,tau=0.01"
    assert get_server_opt("fedavg").spec == "fedavg:lr=1"

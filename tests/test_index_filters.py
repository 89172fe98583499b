"""Metadata filters: every search path against a brute-force oracle written out here, the wire form,
batch search, recovery, and the errors a bad filter gets."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedsvc import wire
from embedsvc.errors import InvalidInputError
from embedsvc.index import planning as planning_module
from embedsvc.index import store as store_module
from embedsvc.index.collection import Collection, IndexSpec
from embedsvc.index.filters import parse_filter

pytest.importorskip("faiss")
pytest.importorskip("pyroaring")
DIM = 8


# ------------------------------------------------------------------ the oracle
def _same(a, b) -> bool:
    return type(a) is type(b) and a == b  # values match with their type: True is not 1, "1" is not 1


def _number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _elements(value) -> list:
    return value if isinstance(value, list) else [value]


def oracle(meta: dict, spec: dict) -> bool:
    """The filter language as docs/search.md states it, evaluated on one item's metadata: a list value
    matches eq / in / ranges when ANY element does, ne / not_in when NO element does."""
    for key, cond in spec.items():
        if key == "$and":
            ok = all(oracle(meta, part) for part in cond)
        elif key == "$or":
            ok = any(oracle(meta, part) for part in cond)
        elif key == "$not":
            ok = not oracle(meta, cond)
        elif not isinstance(cond, dict):
            ok = key in meta and any(_same(e, cond) for e in _elements(meta[key]))
        else:
            has = key in meta
            values = _elements(meta[key]) if has else []
            checks = []
            for op, arg in cond.items():
                if op == "eq":
                    checks.append(has and any(_same(v, arg) for v in values))
                elif op == "ne":
                    checks.append(not (has and any(_same(v, arg) for v in values)))
                elif op == "in":
                    checks.append(has and any(_same(v, a) for v in values for a in arg))
                elif op == "not_in":
                    checks.append(not (has and any(_same(v, a) for v in values for a in arg)))
                elif op == "exists":
                    checks.append(has == arg)
            compare = {
                "gt": lambda v, a: v > a,
                "gte": lambda v, a: v >= a,
                "lt": lambda v, a: v < a,
                "lte": lambda v, a: v <= a,
            }
            bounds = [(compare[op], arg) for op, arg in cond.items() if op in compare]
            if bounds:  # one range: a single element must lie within all of its bounds
                checks.append(has and any(_number(v) and all(f(v, a) for f, a in bounds) for v in values))
            ok = all(checks)
        if not ok:
            return False
    return True


# ------------------------------------------------------------- the strategies
# small domains, so filters and items collide often (boundaries, type twins such as 1 / 1.0 / True / "1")
KEYS = st.sampled_from(["a", "b"])
NUMBERS = st.one_of(st.integers(0, 3), st.sampled_from([1.0, 2.5, 2**53, 2**53 + 1]))
VALUES = st.one_of(NUMBERS, st.sampled_from(["x", "1"]), st.booleans())
# item values: one value or a list of them (tags), empty lists and repeated elements included
ITEM_VALUES = st.one_of(VALUES, st.lists(VALUES, max_size=3))
METADATA = st.dictionaries(KEYS, ITEM_VALUES, max_size=2)
RANGE_NUMBERS = st.one_of(st.integers(0, 3), st.sampled_from([1.0, 2.5, float(2**53), 2**53]))


def _operators() -> st.SearchStrategy[dict]:
    single = st.one_of(
        st.tuples(st.sampled_from(["eq", "ne"]), VALUES),
        st.tuples(st.sampled_from(["in", "not_in"]), st.lists(VALUES, max_size=3)),
        st.tuples(st.sampled_from(["gt", "gte", "lt", "lte"]), RANGE_NUMBERS),
        st.tuples(st.just("exists"), st.booleans()),
    )
    return st.lists(single, min_size=1, max_size=3).map(dict)


LEAF = st.one_of(
    st.builds(lambda k, v: {k: v}, KEYS, VALUES),
    st.builds(lambda k, ops: {k: ops}, KEYS, _operators()),
    st.dictionaries(KEYS, VALUES, min_size=2, max_size=3),  # several keys: all must hold
)
FILTERS = st.recursive(
    LEAF,
    lambda inner: st.one_of(
        st.builds(lambda parts: {"$and": parts}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda parts: {"$or": parts}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda part: {"$not": part}, inner),
    ),
    max_leaves=6,
)


def spec(kind: str = "flat", metric: str = "cosine", dim: int = DIM) -> IndexSpec:
    return IndexSpec(name="f", model="m", model_source="src", dimension=dim, metric=metric, kind=kind)


def _ids(hits) -> set[str]:
    return {h.id for h in hits}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(METADATA, min_size=1, max_size=30),
    rewrites=st.lists(st.tuples(st.integers(0, 29), METADATA), max_size=5),
    deletes=st.lists(st.integers(0, 29), max_size=5),
    filter_spec=FILTERS,
    bulk=st.sampled_from([1, 4, 2048]),  # writes reach faiss at once, in blocks, or stay pending
)
def test_filtered_search_matches_the_oracle(items, rewrites, deletes, filter_spec, bulk):
    with mock.patch.object(store_module, "BULK_BLOCK", bulk):
        _check_against_oracle(items, rewrites, deletes, filter_spec)


def _check_against_oracle(items, rewrites, deletes, filter_spec):
    rng = np.random.default_rng(len(items))
    c = Collection.create(spec(), None)
    ids = [f"i{n}" for n in range(len(items))]
    c.upsert(ids, rng.standard_normal((len(items), DIM)), items)
    current = dict(zip(ids, items, strict=True))
    query = rng.standard_normal(DIM)
    with mock.patch.object(planning_module, "EXACT_SCAN_MAX", 0):  # caches this filter's selector
        before = {i for i, meta in current.items() if oracle(meta, filter_spec)}
        assert _ids(c.search(query, len(items), filter=filter_spec)) == before
    for n, meta in rewrites:  # replaced items must leave their old values' bitmaps
        if n < len(items):
            c.upsert([ids[n]], rng.standard_normal((1, DIM)), [meta])
            current[ids[n]] = meta
    gone = [ids[n] for n in deletes if n < len(items)]
    c.delete(gone)
    for item_id in gone:
        current.pop(item_id, None)
    expected = {i for i, meta in current.items() if oracle(meta, filter_spec)}
    k = len(items)

    exact = c.search(query, k, filter=filter_spec)
    assert _ids(exact) == expected
    assert all(oracle(h.metadata, filter_spec) for h in exact)
    with mock.patch.object(planning_module, "EXACT_SCAN_MAX", 0):  # faiss with a bitmap selector
        assert _ids(c.search(query, k, filter=filter_spec)) == expected  # the cached one is stale now
        assert _ids(c.search(query, k, filter=filter_spec)) == expected  # and this one reuses it
    # the proto form carries the same condition
    proto = wire.filter_to_proto(parse_filter(filter_spec))
    again = parse_filter(wire.filter_from_proto(proto))
    assert _ids(c.search(query, k, where=again)) == expected


DOMAIN = [0, 1, 2, 3, 1.0, 2.5, 2**53, 2**53 + 1, float(2**53), "x", "1", "", True, False]


@pytest.mark.parametrize("use_faiss", [False, True])
def test_every_operator_on_every_value_matches_the_oracle(use_faiss):
    """Exhaustive over a small domain: each operator, each argument, items holding each value or none."""
    c = Collection.create(spec(), None)
    items = [{"a": v} for v in DOMAIN] + [{}, {"b": 1}]
    ids = [f"i{n}" for n in range(len(items))]
    c.upsert(ids, np.random.default_rng(0).standard_normal((len(items), DIM)), items)
    numbers = [v for v in DOMAIN if _number(v)]
    conditions = (
        [{"a": {op: v}} for op in ("eq", "ne") for v in DOMAIN]
        + [{"a": v} for v in DOMAIN]
        + [{"a": {op: [v, w]}} for op in ("in", "not_in") for v in DOMAIN for w in ("x", 2)]
        + [{"a": {op: []}} for op in ("in", "not_in")]
        + [{"a": {op: v}} for op in ("gt", "gte", "lt", "lte") for v in numbers]
        + [{"a": {"gt": lo, "lte": hi}} for lo in numbers for hi in numbers]
        + [{"a": {"exists": flag}} for flag in (True, False)]
    )
    with mock.patch.object(planning_module, "EXACT_SCAN_MAX", 0 if use_faiss else 10**9):
        for condition in conditions:
            expected = {i for i, meta in zip(ids, items, strict=True) if oracle(meta, condition)}
            found = _ids(c.search(np.ones(DIM), len(items), filter=condition))
            assert found == expected, condition


LIST_ITEMS = [
    ["x"],
    ["x", "1"],
    [1, 2.5],
    [True, 0],
    [],
    ["x", "x"],
    [2**53, 2**53 + 1],
    [1.0],
    "x",
    1,
]


@pytest.mark.parametrize("use_faiss", [False, True])
def test_list_values_match_any_element_on_every_operator(use_faiss, tmp_path):
    """Every operator and argument over items holding lists (and scalars beside them), against the oracle,
    before and after a restart (log replay and snapshot both carry the lists)."""
    folder = tmp_path / "tags"
    c = Collection.create(spec(), folder, snapshot_every=6)
    items = [{"a": v} for v in LIST_ITEMS] + [{}, {"b": ["x"]}]
    ids = [f"i{n}" for n in range(len(items))]
    rng = np.random.default_rng(0)
    for n in range(len(items)):  # one write each: some reach the snapshot, the rest stay in the log
        c.upsert([ids[n]], rng.standard_normal((1, DIM)), [items[n]])
    numbers = [v for v in DOMAIN if _number(v)]
    conditions = (
        [{"a": {op: v}} for op in ("eq", "ne") for v in DOMAIN]
        + [{"a": v} for v in DOMAIN]
        + [{"a": {op: [v, w]}} for op in ("in", "not_in") for v in DOMAIN for w in ("x", 2)]
        + [{"a": {op: v}} for op in ("gt", "gte", "lt", "lte") for v in numbers]
        + [{"a": {"gt": lo, "lte": hi}} for lo in numbers for hi in numbers]
        + [{"a": {"exists": flag}} for flag in (True, False)]
    )
    reopened = None
    for round_ in ("written", "reopened"):
        if round_ == "reopened":
            del c  # a crash: the last items live only in the log
            reopened = Collection.open(folder)
        index = reopened if reopened is not None else c
        with mock.patch.object(planning_module, "EXACT_SCAN_MAX", 0 if use_faiss else 10**9):
            for condition in conditions:
                expected = {i for i, meta in zip(ids, items, strict=True) if oracle(meta, condition)}
                found = _ids(index.search(np.ones(DIM), len(items), filter=condition))
                assert found == expected, (round_, condition)
        got, _ = index.get(ids)
        assert [meta for _, _, meta in got] == items  # stored as given: lists, their order and repeats
    assert _ids(c_search(reopened, {"a": {"in": ["1"]}})) == {"i1"}
    assert _ids(c_search(reopened, {"a": {"not_in": ["x"]}})) == {f"i{n}" for n in (2, 3, 4, 6, 7, 9, 10, 11)}


def c_search(c, where):
    return c.search(np.ones(DIM), 20, filter=where)


def test_list_values_are_checked_and_copied():
    c = Collection.create(spec(), None)
    for bad in ([["nested"]], [{"k": 1}], [float("nan")], [None]):
        with pytest.raises(InvalidInputError, match=r"item 0: metadata value of 'tags' is a list"):
            c.upsert(["a"], np.ones((1, DIM)), [{"tags": bad}])
    with pytest.raises(InvalidInputError, match=r"item 0: metadata value of 'o'.*got dict"):
        c.upsert(["a"], np.ones((1, DIM)), [{"o": {"k": 1}}])
    assert c.count() == 0
    c.upsert(["a"], np.ones((1, DIM)), [{"tags": ("p", "q")}])  # a tuple is stored as a list
    (found,), _ = c.get(["a"])
    assert found[2] == {"tags": ["p", "q"]}
    found[2]["tags"].append("changed")  # the caller's copy
    assert c.get(["a"])[0][0][2] == {"tags": ["p", "q"]}
    assert _ids(c.search(np.ones(DIM), 5, filter={"tags": "q"})) == {"a"}


def test_exact_and_faiss_paths_agree_on_scores_and_order():
    rng = np.random.default_rng(3)
    n = 3000
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    metadata = [{"g": i % 10, "price": float(i % 97)} for i in range(n)]
    for metric in ("cosine", "inner_product", "l2"):
        c = Collection.create(spec(metric=metric), None)
        c.upsert([f"v{i}" for i in range(n)], vectors, metadata)
        queries = rng.standard_normal((5, DIM)).astype(np.float32)
        where = {"g": {"in": [1, 2]}, "price": {"lt": 50}}
        exact = c.search_many(queries, 7, filter=where)
        with mock.patch.object(planning_module, "EXACT_SCAN_MAX", 0):
            via_faiss = c.search_many(queries, 7, filter=where)
        for a, b in zip(exact, via_faiss, strict=True):
            assert [h.id for h in a] == [h.id for h in b]
            np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-5, atol=1e-5)
        # and both agree with a brute-force ranking written here
        allowed = np.array([i for i, m in enumerate(metadata) if m["g"] in (1, 2) and m["price"] < 50])
        for query, hits in zip(queries, exact, strict=True):
            base = vectors[allowed]
            if metric == "cosine":
                base = base / np.linalg.norm(base, axis=1, keepdims=True)
                q = query / np.linalg.norm(query)
                scores = base @ q
            elif metric == "inner_product":
                scores = base @ query
            else:
                scores = -((base - query) ** 2).sum(axis=1)
            best = allowed[np.argsort(-scores)[:7]]
            assert [h.id for h in hits] == [f"v{i}" for i in best]


def _recall(results, truths) -> float:
    return sum(len(_ids(h) & {f"v{i}" for i in t}) for h, t in zip(results, truths, strict=True)) / (
        10 * len(truths)
    )


@pytest.mark.parametrize("kind", ["hnsw", "ivf_flat"])
@pytest.mark.parametrize("share", [0.01, 0.1, 0.5])
def test_approximate_filtered_search_keeps_recall(kind, share):
    """A filter handed to faiss must not cost recall: at least the unfiltered recall of the same index."""
    rng = np.random.default_rng(5)
    n, dim = 6000, 32
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    tags = rng.random(n) < share
    c = Collection.create(spec(kind=kind, dim=dim), None)
    c.upsert([f"v{i}" for i in range(n)], vectors, [{"tagged": bool(t)} for t in tags])
    queries = rng.standard_normal((40, dim)).astype(np.float32)
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    allowed = np.flatnonzero(tags)
    with mock.patch.object(planning_module, "EXACT_SCAN_MAX", 0):  # force faiss even for 1 %
        filtered = c.search_many(queries, 10, filter={"tagged": True})
    assert all(h.metadata == {"tagged": True} for hits in filtered for h in hits)
    filtered_truth = [allowed[np.argsort(-(normed[allowed] @ q))[:10]] for q in queries]
    unfiltered_truth = [np.argsort(-(normed @ q))[:10] for q in queries]
    unfiltered = _recall(c.search_many(queries, 10), unfiltered_truth)
    assert _recall(filtered, filtered_truth) >= min(unfiltered - 0.02, 0.95)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf_flat", "ivf_pq"])
def test_batch_search_equals_one_by_one(kind, monkeypatch):
    monkeypatch.setattr(store_module, "BULK_BLOCK", 700)
    rng = np.random.default_rng(9)
    n, dim = 2000, 16
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    c = Collection.create(spec(kind=kind, dim=dim), None)
    for start in range(0, n, 300):  # in faiss, and the last 200 still pending
        stop = min(n, start + 300)
        c.upsert(
            [f"v{i}" for i in range(start, stop)],
            vectors[start:stop],
            [{"odd": i % 2 == 1} for i in range(start, stop)],
        )
    assert 200 <= len(c._pending) <= 500
    c.delete([f"v{i}" for i in range(0, 200, 3)] + ["v1999"])  # HNSW tombstones, IVF removals, a pending one
    queries = rng.standard_normal((12, dim)).astype(np.float32)
    for filter_spec in (None, {"odd": True}):
        batch = c.search_many(queries, 10, filter=filter_spec)
        single = [c.search(q, 10, filter=filter_spec) for q in queries]
        assert [[h.id for h in hits] for hits in batch] == [[h.id for h in hits] for hits in single]
        deleted = {f"v{i}" for i in range(0, 200, 3)} | {"v1999"}
        assert not any(_ids(hits) & deleted for hits in batch)


def test_filters_survive_restart_and_follow_rewrites(tmp_path):
    folder = tmp_path / "f"
    rng = np.random.default_rng(1)
    c = Collection.create(spec(), folder, snapshot_every=3)
    for batch in range(5):  # snapshots and log records both
        ids = [f"b{batch}-{i}" for i in range(10)]
        c.upsert(
            ids, rng.standard_normal((10, DIM)), [{"batch": batch, "even": i % 2 == 0} for i in range(10)]
        )
    c.upsert(["b0-0"], rng.standard_normal((1, DIM)), [{"batch": 99}])  # rewritten: no longer batch 0
    c.delete(["b1-1"])
    query = rng.standard_normal(DIM)
    where = {"$or": [{"batch": {"lte": 1}}, {"batch": {"gt": 50}}], "even": {"ne": False}}
    before = _ids(c.search(query, 100, filter=where))
    c.close()
    reopened = Collection.open(folder)
    after = _ids(reopened.search(query, 100, filter=where))
    assert before == after
    expected = {f"b{b}-{i}" for b in (0, 1) for i in range(0, 10, 2)} - {"b0-0"} | {"b0-0"}
    assert after == expected  # b0-0 is batch 99 (gt 50) and has no "even": ne holds without the key
    assert _ids(reopened.search(query, 100, filter={"batch": 0})) == {f"b0-{i}" for i in range(1, 10)}


def test_integers_beyond_float_precision_compare_exactly():
    c = Collection.create(spec(), None)
    big = 2**53
    c.upsert(["lo", "hi"], np.ones((2, DIM)), [{"n": big}, {"n": big + 1}])
    assert _ids(c.search(np.ones(DIM), 5, filter={"n": {"gt": big}})) == {"hi"}
    assert _ids(c.search(np.ones(DIM), 5, filter={"n": big + 1})) == {"hi"}
    assert _ids(c.search(np.ones(DIM), 5, filter={"n": {"lte": big}})) == {"lo"}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"lang": {"like": "e%"}}, "filter on 'lang': unknown operator(s) ['like']"),
        ({"lang": {}}, "filter on 'lang': unknown operator(s) (none)"),
        ({"price": {"gt": "10"}}, "filter on 'price': gt takes a finite number"),
        ({"price": {"lt": float("nan")}}, "filter on 'price': lt takes a finite number"),
        ({"price": {"gte": True}}, "filter on 'price': gte takes a finite number"),
        ({"tag": {"in": "abc"}}, "filter on 'tag': in takes a list"),
        (
            {"tag": {"eq": [1]}},
            "filter on 'tag': a filter value is one string, number or boolean, not a list",
        ),
        ({"tag": ["a"]}, "filter on 'tag': a filter value is one string, number or boolean, not a list"),
        ({"tag": None}, "filter on 'tag': None is not a string"),
        ({"author": {"exists": 1}}, "filter on 'author': exists takes true or false"),
        ({"$and": []}, "$and takes a non-empty list"),
        ({"$or": [{}]}, "$or holds an empty filter"),
        ({"$nor": [{"a": 1}]}, "unknown combinator '$nor'"),
        ({"": 1}, "metadata keys are non-empty strings"),
        ([{"a": 1}], "a filter is a JSON object"),
    ],
)
def test_bad_filters_name_what_to_fix(bad, message):
    with pytest.raises(InvalidInputError) as info:
        parse_filter(bad)
    assert message in str(info.value) and info.value.field == "filter"


def test_filters_nest_to_a_limit():
    deep: dict = {"a": 1}
    for _ in range(20):
        deep = {"$not": deep}
    with pytest.raises(InvalidInputError, match="nest at most 16"):
        parse_filter(deep)

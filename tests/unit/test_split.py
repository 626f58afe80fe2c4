"""Split methods: each puts rows where its user expects, whatever the partitioning."""

from __future__ import annotations

import itertools
import json
import logging

import numpy as np
import pandas as pd
import pytest

from tasks.config import SplitConfig
from tasks.errors import ConfigError, DataError
from tasks.features.split import (
    DEFAULT_SALT,
    SPLITS,
    TEST,
    TRAIN,
    VALIDATION,
    SplitPlan,
    assign_splits,
    finish_plan,
    merge_plan_partials,
    needs_plan,
    plan_partial,
    row_uniforms,
)
from tasks.features.stats import tree_reduce

STRATIFIED = SplitConfig(method="stratified")
TIME = SplitConfig(method="time", column="filed_at")
GROUP = SplitConfig(method="group", column="user")


def claims(n: int, seed: int = 0) -> pd.DataFrame:
    """Claims with a 2% minority class, timestamps with many ties, and users with several claims each."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "amount": rng.lognormal(size=n),
            "kind": rng.choice(["car", "home", "travel"], size=n),
            "filed_at": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 400, n), unit="D"),
            "user": rng.integers(0, max(n // 8, 1), n),
            "label": rng.choice(["ok", "review", "fraud"], p=[0.88, 0.10, 0.02], size=n),
        }
    )


def pieces(frame: pd.DataFrame, n: int, seed: int = 1) -> list[pd.DataFrame]:
    """``frame`` cut into ``n`` partitions of uneven sizes (some empty)."""
    cuts = np.sort(np.random.default_rng(seed).integers(0, len(frame) + 1, n - 1))
    bounds = [0, *cuts.tolist(), len(frame)]
    return [frame.iloc[a:b] for a, b in itertools.pairwise(bounds)]


def fit(frame: pd.DataFrame, split: SplitConfig, partitions: int = 1, salt: str = DEFAULT_SALT) -> SplitPlan:
    partials = [plan_partial(p, split, "label", salt=salt) for p in pieces(frame, partitions)]
    return finish_plan(tree_reduce(partials, merge_plan_partials), split, salt)


def shares(codes: np.ndarray) -> np.ndarray:
    return np.bincount(codes, minlength=3) / codes.size


def test_random_is_the_row_hash_rule_and_needs_no_plan() -> None:
    frame = claims(100_000)
    codes = assign_splits(frame, SplitConfig())
    u = row_uniforms(frame)
    expected = np.where(u < 0.15, VALIDATION, np.where(u < 0.30, TEST, TRAIN))
    np.testing.assert_array_equal(codes, expected)
    assert codes.dtype == np.int8
    np.testing.assert_allclose(shares(codes), [0.70, 0.15, 0.15], atol=0.005)
    assert not needs_plan(SplitConfig()) and not needs_plan(GROUP)
    assert needs_plan(STRATIFIED) and needs_plan(TIME)
    plan = finish_plan(None, SplitConfig(validation=0.1, test=0.2), "salt-2")
    np.testing.assert_array_equal(assign_splits(frame, plan), assign_splits(frame, SplitConfig(0.1, 0.2), "salt-2"))


def test_stratified_keeps_every_class_share_including_a_two_percent_minority() -> None:
    frame = claims(100_000)
    plan = fit(frame, STRATIFIED, partitions=8)

    codes = assign_splits(frame, plan, label="label")

    assert sorted(plan.classes) == ["fraud", "ok", "review"]
    by_class = pd.crosstab(frame["label"], codes, normalize="index")
    for name, row in by_class.iterrows():
        n = int((frame["label"] == name).sum())
        # Exact (to one row) for classes the sketch holds whole, within its bound beyond.
        tolerance = 2 / n if n <= 4096 else 0.002
        np.testing.assert_allclose(row.to_numpy(), [0.70, 0.15, 0.15], atol=tolerance, err_msg=name)
    minority = frame["label"] == "fraud"
    random_codes = assign_splits(frame, SplitConfig())
    # The point of stratifying: the random split's minority share wanders further.
    assert abs(shares(codes[minority])[TEST] - 0.15) <= abs(shares(random_codes[minority])[TEST] - 0.15)


def test_stratified_small_classes_split_exactly() -> None:
    frame = claims(1000)
    plan = fit(frame, STRATIFIED, partitions=5)
    codes = assign_splits(frame, plan, label="label")
    for name in ("fraud", "review", "ok"):
        n = int((frame["label"] == name).sum())
        counts = np.bincount(codes[(frame["label"] == name).to_numpy()], minlength=3)
        # Cut points at the class's 0.15 and 0.30 quantiles of its row uniforms (np.quantile).
        assert counts[VALIDATION] == np.floor(0.15 * (n - 1)) + 1
        assert counts[VALIDATION] + counts[TEST] == np.floor(0.30 * (n - 1)) + 1


def test_stratified_rows_of_a_class_the_plan_never_saw_fall_back_to_the_row_hash() -> None:
    frame = claims(2000)
    plan = fit(frame, STRATIFIED)
    new = frame.assign(label="appeal")
    np.testing.assert_array_equal(assign_splits(new, plan, label="label"), assign_splits(new, SplitConfig()))


def test_time_puts_the_earliest_rows_in_train_and_never_splits_a_tie() -> None:
    frame = claims(100_000)  # 400 distinct days: every day is a tie of about 250 rows
    plan = fit(frame, TIME, partitions=8)

    codes = assign_splits(frame, plan)

    times = frame["filed_at"]
    assert times[codes == TRAIN].max() < times[codes == VALIDATION].min()
    assert times[codes == VALIDATION].max() < times[codes == TEST].min()
    # A whole day moves with its cut point, so the shares are off by at most a day's rows.
    np.testing.assert_allclose(shares(codes), [0.70, 0.15, 0.15], atol=1 / 400 + 0.002)
    assert plan.missing == 0


def test_time_accepts_zoned_text_and_numbers_like_the_transform() -> None:
    frame = claims(3000)
    plan = fit(frame, TIME)
    as_text = frame.assign(filed_at=frame["filed_at"].dt.tz_localize("UTC").dt.tz_convert("Europe/Paris").astype(str))
    np.testing.assert_array_equal(assign_splits(as_text, fit(as_text, TIME)), assign_splits(frame, plan))
    as_days = frame.assign(filed_at=(frame["filed_at"] - pd.Timestamp("2024-01-01")).dt.days)
    day_plan = fit(as_days, TIME)
    assert not day_plan.timestamps and all(isinstance(c, float) for c in day_plan.to_json()["cuts"])
    np.testing.assert_array_equal(assign_splits(as_days, day_plan), assign_splits(frame, plan))
    with pytest.raises(DataError, match="should hold date-times"):
        assign_splits(as_days, plan)


def test_rows_without_a_time_are_split_by_row_hash_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    frame = claims(5000)
    frame.loc[frame.index[::10], "filed_at"] = pd.NaT
    with caplog.at_level(logging.WARNING, logger="tasks.features.split"):
        plan = fit(frame, TIME, partitions=3)
    assert plan.missing == 500 and "missing in 500 rows" in caplog.text
    codes = assign_splits(frame, plan)
    missing = frame["filed_at"].isna().to_numpy()
    np.testing.assert_array_equal(codes[missing], assign_splits(frame, SplitConfig())[missing])
    timed = frame["filed_at"][~missing]
    assert timed[codes[~missing] == TRAIN].max() < timed[codes[~missing] == TEST].min()


def test_a_time_column_without_any_time_is_an_error_naming_it() -> None:
    frame = claims(100).assign(filed_at=pd.NaT)
    with pytest.raises(DataError, match="'filed_at' has no values"):
        fit(frame, TIME)
    with pytest.raises(DataError, match="'opened_at' is not a column"):
        plan_partial(frame, SplitConfig(method="time", column="opened_at"))


def test_group_keeps_every_group_on_one_side() -> None:
    frame = claims(100_000)
    frame.loc[frame.index[::50], "user"] = None  # unknown users
    codes = assign_splits(frame, GROUP)

    sides = pd.Series(codes).groupby(frame["user"].to_numpy()).nunique()
    assert (sides == 1).all()
    assert np.unique(codes[frame["user"].isna().to_numpy()]).size == 1  # unknown users: one group
    group_codes = pd.Series(codes).groupby(frame["user"].to_numpy()).first()
    np.testing.assert_allclose(shares(group_codes.to_numpy()), [0.70, 0.15, 0.15], atol=0.02)


def test_group_values_meet_whatever_their_dtype() -> None:
    frame = claims(2000)
    as_float = frame.assign(user=frame["user"].astype(float))
    as_text = frame.assign(user=frame["user"].astype(str))
    expected = assign_splits(frame, GROUP)
    np.testing.assert_array_equal(assign_splits(as_float, GROUP), expected)
    np.testing.assert_array_equal(assign_splits(as_text, GROUP), expected)


@pytest.mark.parametrize("split", [SplitConfig(), STRATIFIED, TIME, GROUP], ids=lambda s: s.method)
def test_codes_do_not_depend_on_the_partitioning(split: SplitConfig) -> None:
    # 3,000 rows: the sketches hold every value, so even the plans are identical.
    frame = claims(3000)
    one = fit(frame, split, partitions=1)
    many = fit(frame, split, partitions=11)
    assert one == many
    whole = assign_splits(frame, one, label="label")
    by_piece = np.concatenate([assign_splits(p, many, label="label") for p in pieces(frame, 7, seed=9)])
    np.testing.assert_array_equal(by_piece, whole)
    assert set(np.unique(whole)) == {TRAIN, VALIDATION, TEST}


@pytest.mark.parametrize("split", [STRATIFIED, TIME], ids=lambda s: s.method)
def test_a_big_plan_applied_anywhere_gives_the_same_codes_and_reruns_agree(split: SplitConfig) -> None:
    frame = claims(60_000)
    plan = fit(frame, split, partitions=9)
    assert fit(frame, split, partitions=9) == plan
    whole = assign_splits(frame, plan, label="label")
    by_piece = np.concatenate([assign_splits(p, plan, label="label") for p in pieces(frame, 5, seed=3)])
    np.testing.assert_array_equal(by_piece, whole)


def test_the_salt_reshuffles_hash_based_methods() -> None:
    frame = claims(5000)
    for split in (SplitConfig(), STRATIFIED, GROUP):
        a = assign_splits(frame, fit(frame, split), label="label")
        b = assign_splits(frame, fit(frame, split, salt="another"), label="label")
        assert (a != b).mean() > 0.2, split.method


@pytest.mark.parametrize("split", [SplitConfig(), STRATIFIED, TIME, GROUP], ids=lambda s: s.method)
def test_the_plan_survives_transform_json(split: SplitConfig) -> None:
    frame = claims(3000)
    plan = fit(frame, split)
    record = json.loads(json.dumps(plan.to_json()))
    assert {"method", "validation", "test", "hash", "column"} <= set(record)
    again = SplitPlan.from_json(record)
    assert again == plan
    np.testing.assert_array_equal(assign_splits(frame, again, label="label"), assign_splits(frame, plan, label="label"))


def test_time_cuts_read_as_times_in_transform_json() -> None:
    record = fit(claims(3000), TIME).to_json()
    first, second = (pd.Timestamp(c) for c in record["cuts"])
    assert pd.Timestamp("2024-01-01", tz="UTC") < first < second < pd.Timestamp("2025-02-05", tz="UTC")


def test_old_transform_json_split_records_read_as_random() -> None:
    plan = SplitPlan.from_json({"validation": 0.1, "test": 0.2, "hash": "updraft-split-1"})
    assert (plan.method, plan.validation, plan.test) == ("random", 0.1, 0.2)
    with pytest.raises(DataError, match="split record is incomplete"):
        SplitPlan.from_json({"method": "time", "validation": 0.1, "test": 0.2, "hash": "h", "column": "t"})
    with pytest.raises(DataError, match="split.column is required"):
        SplitPlan.from_json({"method": "time", "validation": 0.1, "test": 0.2, "hash": "h", "cuts": [1.0, 2.0]})


def test_misuse_says_what_to_do() -> None:
    frame = claims(100)
    with pytest.raises(ValueError, match="needs a plan fitted over the data"):
        assign_splits(frame, TIME)
    with pytest.raises(ValueError, match="label="):
        plan_partial(frame, STRATIFIED)
    with pytest.raises(ConfigError, match="split.column is required for split.method group"):
        assign_splits(frame, SplitConfig(method="group"))
    with pytest.raises(ConfigError, match="split.method 'kfold'"):
        needs_plan(SplitConfig(method="kfold"))
    partial = plan_partial(frame, STRATIFIED, "label", salt="a")
    with pytest.raises(ValueError, match="one salt throughout"):
        finish_plan(partial, STRATIFIED, "b")


def test_split_names_index_the_codes() -> None:
    assert [SPLITS[c] for c in (TRAIN, VALIDATION, TEST)] == ["train", "validation", "test"]


def test_row_hashes_follow_values_not_storage() -> None:
    n = 2000
    rng = np.random.default_rng(4)
    base = pd.DataFrame(
        {
            "x": rng.normal(size=n).astype(np.float32),
            "k": rng.choice(["a", "b", None], n),
            "i": rng.integers(0, 5, n),
            "t": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 1000, n), unit="h"),
        }
    )
    from tasks.features.split import row_hashes

    same = base.assign(
        x=base["x"].astype(np.float64),  # the same numbers, wider
        k=base["k"].astype("category"),
        i=base["i"].astype("Int64"),
    )
    np.testing.assert_array_equal(row_hashes(base), row_hashes(same))
    np.testing.assert_array_equal(row_hashes(base.astype({"k": object})), row_hashes(base))
    zeros = pd.DataFrame({"z": [0.0, -0.0, np.nan, None]})
    hashes = row_hashes(zeros)
    assert hashes[0] == hashes[1] and hashes[2] == hashes[3]
    swapped = base[["k", "x", "i", "t"]]  # column order is part of the row
    assert (row_hashes(swapped) != row_hashes(base)).mean() > 0.99
    assert len(np.unique(row_hashes(base))) == len(base.drop_duplicates())

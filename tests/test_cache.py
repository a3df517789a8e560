"""Caches of whole-volume steps: found by content, robust to damaged files, kept to the latest run."""

import numpy as np

from vem3d import cache as cache_module
from vem3d.cache import ArrayCache, TableCache, mask_key


def test_mask_keys_follow_content_shape_and_settings():
    mask = np.zeros((4, 5, 6), bool)
    mask[1, 2, 3] = True
    key = mask_key("context", mask, 0.75)
    assert mask_key("context", mask.copy(), 0.75) == key
    assert mask_key("context", mask.reshape(4, 6, 5), 0.75) != key  # same bits, other shape
    assert mask_key("context", mask, 1.0) != key
    assert mask_key("other context", mask, 0.75) != key
    changed = mask.copy()
    changed[3, 4, 5] = True
    assert mask_key("context", changed, 0.75) != key


def test_a_damaged_cache_counts_as_empty_and_is_rewritten(tmp_path):
    table_path = tmp_path / "objects.npz"
    table_path.write_bytes(b"not a zip file")
    table = TableCache(table_path, columns=2)
    assert table.get("a") is None
    table.put("a", [1.0, 2.0])
    table.save()
    assert TableCache(table_path, columns=2).get("a").tolist() == [1.0, 2.0]
    assert TableCache(table_path, columns=3).get("a") is None  # another layout: not reused

    arrays = ArrayCache(tmp_path / "blocks")
    (arrays.folder / "b.npz").write_bytes(b"truncated")
    assert arrays.get("b") is None
    (arrays.folder / "b.npz").write_bytes(b"")
    assert arrays.get("b") is None
    arrays.put("b", faces=np.arange(6).reshape(2, 3))
    assert ArrayCache(tmp_path / "blocks").get("b")["faces"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_results_kept_by_other_code_are_not_found(tmp_path, monkeypatch):
    # The package version stays the same from commit to commit; its source does not.
    contexts = [ArrayCache(tmp_path / "blocks", "mesh").context, TableCache(tmp_path / "t.npz", 2, "mesh").context]
    monkeypatch.setattr(cache_module, "code_version", lambda: "other source")
    assert ArrayCache(tmp_path / "blocks", "mesh").context != contexts[0]
    assert TableCache(tmp_path / "t.npz", 2, "mesh").context != contexts[1]


def test_caches_keep_only_the_entries_used_since_they_were_opened(tmp_path):
    first = ArrayCache(tmp_path / "blocks")
    for key in "abc":
        first.put(key, values=np.array([ord(key)]))
    second = ArrayCache(tmp_path / "blocks")
    assert second.get("a")["values"].tolist() == [97]
    second.put("d", values=np.array([0]))
    second.prune()
    assert sorted(path.stem for path in (tmp_path / "blocks").iterdir()) == ["a", "d"]

    table = TableCache(tmp_path / "t.npz", columns=1)
    for key in "abc":
        table.put(key, [1])
    table.save()
    reopened = TableCache(tmp_path / "t.npz", columns=1)
    reopened.get("b")
    reopened.save()
    again = TableCache(tmp_path / "t.npz", columns=1)
    assert [again.get(key) is not None for key in "abc"] == [False, True, False]

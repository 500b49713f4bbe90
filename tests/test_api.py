"""The public surface: __all__ is complete and every public function is typed and documented."""

import inspect

import stablesoftmax as ss


def test_all_names_every_public_attribute():
    public = {n for n in dir(ss) if not n.startswith("_")} - {"annotations"}
    modules = {n for n in public if inspect.ismodule(getattr(ss, n))} - {"naive", "autograd"}
    assert public - modules <= set(ss.__all__) | {"autograd"}, sorted(public - set(ss.__all__))
    assert all(hasattr(ss, n) for n in ss.__all__)


def test_array_first_and_options_keyword_only():
    for name in ss.__all__:
        fn = getattr(ss, name)
        if not inspect.isfunction(fn):
            continue
        params = list(inspect.signature(fn).parameters.values())
        if name in ("reference_path", "triton_path", "get_num_threads"):  # context managers, a reading: no array
            assert not params
            continue
        if name in ("set_reference_budget", "set_num_threads"):  # settings: one number, positional-only too
            assert [p.kind for p in params] == [inspect.Parameter.POSITIONAL_ONLY]
            continue
        assert params[0].kind is inspect.Parameter.POSITIONAL_ONLY, name
        assert all(p.kind in (p.POSITIONAL_ONLY, p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params), name
        assert fn.__doc__, name


def test_family_docstrings_carry_the_contract():
    for fn in (ss.logsumexp, ss.softmax, ss.log_softmax, ss.cross_entropy):
        assert "Special values" in fn.__doc__, fn.__name__


def test_public_functions_are_typed():
    for name in ss.__all__:
        fn = getattr(ss, name)
        if inspect.isfunction(fn):
            assert "return" in fn.__annotations__, name


def test_version():
    assert ss.__version__.count(".") == 2

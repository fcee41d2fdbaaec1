"""vggtl.tfquiet: TensorFlow imported once, quietly, out of the garbage collector's way.
(Its stderr filtering is tested through the commands, in test_cli.py.)"""

from __future__ import annotations

import gc

from vggtl import tfquiet


def test_collections_paused_freezes_what_it_made_and_gives_the_collector_back():
    before = gc.get_freeze_count()
    with tfquiet.collections_paused():
        assert not gc.isenabled()
        made = [[] for _ in range(1000)]  # long-lived objects, as an import makes
    assert gc.isenabled()
    assert gc.get_freeze_count() >= before + len(made)  # later collections skip them
    cycle = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1  # what is made afterwards is collected as before


def test_a_disabled_collector_stays_disabled():
    gc.disable()
    try:
        with tfquiet.collections_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_load_imports_both_frameworks_once():
    import sys

    tf = tfquiet.load()
    assert tf is sys.modules["tensorflow"] and "keras" in sys.modules
    assert tfquiet.load() is tf


def test_a_command_defers_pyplot_and_scikit_learn_until_they_are_used():
    """In a command's process Keras' imports of matplotlib.pyplot (~0.5 s) and of
    its scikit-learn wrappers (which import scikit-learn, ~0.9 s) get stand-ins;
    the first use imports the real module, for every way of importing it. A
    command that never imports TensorFlow does not even look for matplotlib."""
    import subprocess
    import sys

    code = (
        "import sys, importlib.util\n"
        "from vggtl import errors, tfquiet\n"
        "errors.cli_entry(lambda argv: 0)()\n"
        "print('without TensorFlow:', 'matplotlib' in sys.modules)\n"
        "errors.cli_entry(lambda argv: tfquiet.load() and 0)()\n"
        "from keras.src.visualization import plot_image_gallery\n"  # imports matplotlib.pyplot as plt
        "print('after Keras:', 'matplotlib.figure' in sys.modules, importlib.util.find_spec('matplotlib.pyplot').name,"
        " 'sklearn' in sys.modules, importlib.util.find_spec('keras.wrappers').name)\n"
        "import matplotlib.pyplot as plt\n"
        "from matplotlib import pyplot\n"
        "figure = plt.figure(figsize=(1, 1))\n"
        "print('used:', type(figure).__name__, 'subplots' in dir(pyplot), sys.modules['matplotlib.pyplot'].__file__.endswith('pyplot.py'),"
        " plot_image_gallery.plt.subplots is sys.modules['matplotlib.pyplot'].subplots)\n"
        "import keras\n"
        "from keras.wrappers import SKLearnClassifier\n"
        "print('wrappers used:', SKLearnClassifier.__name__, keras.wrappers.SKLearnRegressor.__name__, 'sklearn' in sys.modules,"
        " sys.modules['keras.wrappers'].__file__.endswith('__init__.py'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "without TensorFlow: False" in done.stdout
    assert "after Keras: False matplotlib.pyplot False keras.wrappers" in done.stdout
    assert "used: Figure True True True" in done.stdout
    assert "wrappers used: SKLearnClassifier SKLearnRegressor True True" in done.stdout

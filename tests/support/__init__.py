"""The tests' one shared support package (not tests itself): ``support.helpers`` and ``support.netns_harness``.

* ``helpers``: deterministic keys and rng, IP packets built with ``struct``, device pairs over ``MemoryNetwork``;
* ``netns_harness``: throwaway network namespaces and the scenarios a test file runs inside them as a child process.

``tests/conftest.py`` puts ``tests/`` on ``sys.path``, and the type checker gets it as ``MYPYPATH=tests``, so test
modules in every folder import ``support.helpers`` the same way. The interop lab stays in ``tests/interop/``: nothing
outside that folder uses it.
"""

"""The result object and the progress display of :func:`numadam.minimize`."""

import sys
import time

__all__ = ["make_result", "Progress", "OptimizeResult"]


class OptimizeResult(dict):
    """``scipy.optimize.OptimizeResult``'s stand-in when scipy is not installed:
    a dict whose keys are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as error:
            raise AttributeError(name) from error

    __setattr__ = dict.__setitem__
    __delattr__ = dict.__delitem__

    def __dir__(self):
        return list(self.keys())

    def __repr__(self):
        if not self:
            return f"{type(self).__name__}()"
        width = max(map(len, self.keys())) + 1
        return "\n".join(f"{key.rjust(width)}: {value!r}" for key, value in self.items())


_result_class = None


def make_result(**fields):
    """An ``OptimizeResult``: scipy's own class when scipy is importable."""
    global _result_class
    if _result_class is None:
        try:
            from scipy.optimize import OptimizeResult as scipy_result
        except ImportError:
            scipy_result = OptimizeResult
        _result_class = scipy_result
    return _result_class(**fields)


class Progress:
    """``disp``: a tqdm bar when tqdm is installed, else a line a second."""

    def __init__(self, total, enabled):
        self.enabled = enabled
        self.bar = None
        self.last = time.monotonic()
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, desc="numadam.minimize", unit="step")

    def update(self, nit, f, best, gnorm):
        if not self.enabled:
            return
        if self.bar is not None and nit > self.bar.n:
            self.bar.update(nit - self.bar.n)
        now = time.monotonic()
        interval = 0.1 if self.bar is not None else 1.0
        if now - self.last < interval:
            return
        self.last = now
        text = f"f={f:.6g} best={best:.6g} max|g|={gnorm:.3g}"
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
        else:
            print(f"numadam.minimize step {nit}: {text}", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()

    def summary(self, result):
        if self.enabled:
            print(result.message)
            print(f"         Current function value: {result.fun:.6g}")
            print(f"         Iterations: {result.nit:d}")
            print(f"         Function evaluations: {result.nfev:d}")

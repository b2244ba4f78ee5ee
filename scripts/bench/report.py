"""The terminal table of the benchmark's figures."""


class Table:
    def __init__(self):
        self.rows = []  # (section, metric, value, target, verdict)

    def section(self, title):
        self.rows.append((title, None, None, None, None))

    def row(self, metric, value, target="", ok=None):
        """ok: True/False when a target applies and could be judged, None otherwise."""
        verdict = "" if ok is None else ("ok" if ok else "MISS")
        self.rows.append((None, metric, value, target, verdict))

    def render(self):
        cells = [r for r in self.rows if r[1] is not None]
        w_m = max([len(r[1]) for r in cells] + [6])
        w_v = max([len(r[2]) for r in cells] + [5])
        w_t = max([len(r[3]) for r in cells] + [6])
        lines = []
        header = f"  {'metric':<{w_m}}  {'value':>{w_v}}  {'target':<{w_t}}  verdict"
        for section, metric, value, target, verdict in self.rows:
            if metric is None:
                lines.append("")
                lines.append(f"== {section}")
                lines.append(header)
            else:
                lines.append(f"  {metric:<{w_m}}  {value:>{w_v}}  {target:<{w_t}}  {verdict}".rstrip())
        return "\n".join(lines)


def num(x, fmt="{:.1f}", none="-"):
    return none if x is None else fmt.format(x)

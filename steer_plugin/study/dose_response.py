"""The dose-response plot (dose_response.png): the emotion's headline metric against how hard each vector pushed,
with the share of degenerate outputs beneath."""

from __future__ import annotations

from steer_plugin.io.figures import new_figure, png_bytes
from steer_plugin.study.arms import SIDE, Arm, Study, emotion_task, target_metric
from steer_plugin.study.quality import DEGENERATE, FLUENT_TARGET


def dose_response_png(study: Study) -> bytes:
    """Above: the headline emotion metric vs measured KL (alpha without side effects), each vector with 95% paired
    intervals, its control dashed, the prompting reference as a star. Below: the share of degenerate outputs."""
    use_kl = all(a.kl is not None for a in study.arms)
    fig = new_figure(8, 7)
    ax, ax_bad = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    colours = [f"C{i % 10}" for i in range(len(study.emotions))]
    fluent = False
    for colour, emotion in zip(colours, study.emotions):
        arms = sorted((a for a in study.arms if a.series == emotion), key=lambda a: a.alpha)
        metric = target_metric(arms[0].row, arms[0].emotion)
        fluent = fluent or metric.endswith(FLUENT_TARGET)
        degenerate = f"{emotion_task(arms[0].row, arms[0].emotion)}/{DEGENERATE}"
        base = study.baseline.metrics.get(metric)
        series: list[tuple[str, list[Arm]]] = [(emotion, arms)]
        n_controls = max((len(study.controls_of(a)) for a in arms), default=0)
        for i in range(n_controls):
            picked = [study.controls_of(a)[i] for a in arms if len(study.controls_of(a)) > i]
            series.append((f"{emotion}: random control" + (f" {i}" if n_controls > 1 else ""), picked))
        for k, (name, points) in enumerate(series):
            xs, ys, lo, hi = ([0.0], [base], [0.0], [0.0]) if base is not None else ([], [], [], [])
            bad_x, bad_y = [0.0], [study.baseline.metrics.get(degenerate)]
            for a in points:
                x = (a.kl or 0.0) if use_kl else a.alpha
                bad_x.append(x)
                bad_y.append(a.row.metrics.get(degenerate))
                p, y = a.row.paired.get(metric), a.row.metrics.get(metric)
                if p is None or y is None:
                    continue
                xs.append(x)
                ys.append(y)
                lo.append(p.delta - p.ci_low)
                hi.append(p.ci_high - p.delta)
            control = k > 0  # the emotion vector first, then its controls (dashed)
            style = {"color": colour, "ls": "--" if control else "-", "marker": "x" if control else "o"}
            if len(xs) > 1:
                ax.errorbar(xs, ys, yerr=[lo, hi], capsize=3, label=name, **style)
            shown = [(x, y) for x, y in zip(bad_x, bad_y) if y is not None]
            if len(shown) > 1:
                ax_bad.plot([x for x, _ in shown], [y for _, y in shown], **style)
        prompted = study.prompted.get(arms[0].emotion)
        if prompted is not None:
            kl = prompted.metrics.get(f"{SIDE}/kl", 0.0) if use_kl else 0.0
            if (y := prompted.metrics.get(metric)) is not None:
                ax.plot([kl], [y], marker="*", ms=12, color=colour, ls="none", label=f"asking for {arms[0].emotion}")
            if (bad := prompted.metrics.get(degenerate)) is not None:
                ax_bad.plot([kl], [bad], marker="*", ms=12, color=colour, ls="none")
    ax_bad.set_xlabel("KL to the unsteered model (nats/token, neutral texts)" if use_kl else "alpha")
    what = "outputs fluent in both arms" if fluent else "all outputs"
    ax.set_ylabel(f"target probability\n({what})")
    ax.set_title("Dose-response: target probability with 95% paired intervals; baseline at 0")
    ax_bad.set_ylabel("degenerate outputs")
    ax_bad.set_ylim(-0.05, 1.05)
    for a in (ax, ax_bad):
        a.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return png_bytes(fig)

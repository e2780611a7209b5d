package bench

import (
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// systemColors colour each system alike in every figure.
var systemColors = map[string]color.Color{
	SystemSingle:       color.RGBA{R: 120, G: 120, B: 120, A: 255},
	SystemSwitching:    color.RGBA{R: 230, G: 140, A: 255},
	SystemStatic:       color.RGBA{G: 150, B: 60, A: 255},
	SystemCascadeServe: color.RGBA{B: 210, A: 255},
}

func systemColor(name string) color.Color {
	if c, ok := systemColors[name]; ok {
		return c
	}
	return color.Black
}

// PlotComparison writes compare.png into dir: every system's p95 and
// accuracy against the load offered, from its probes and its runs at
// multiples of the single model's capacity, the SLO and the accuracy floor
// marked.
func PlotComparison(c *Comparison, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	p95 := newPlot("p95 against load", "offered load (items/s)", "p95 (ms), overloaded runs at the top")
	acc := newPlot("accuracy against load", "offered load (items/s)", "accuracy (%)")
	paired := c.Settings.PairedFloor
	if paired {
		// Each probe answers other items: against the single model on the
		// same items, the comparison the floor makes.
		acc.Title.Text = "accuracy against load, over the single model's on the same items"
		acc.Y.Label.Text = "accuracy − single model's (points)"
	}
	slo := c.Settings.SLOP95Ms
	top := 3 * slo
	maxLoad, minFloor := 0.0, 100.0
	for _, s := range c.Systems {
		var lat, ac plotter.XYs
		for _, r := range runsByLoad(s) {
			y := min(r.P95Ms, top)
			if r.Run.Aborted || r.Run.Answered == 0 {
				y = top
			}
			lat = append(lat, plotter.XY{X: r.Load, Y: y})
			if r.Run.Answered > 0 {
				y := 100 * r.Accuracy
				if paired {
					y = 100 * (r.Accuracy - r.Run.ReferenceAccuracy)
				}
				ac = append(ac, plotter.XY{X: r.Load, Y: y})
			}
			maxLoad = max(maxLoad, r.Load)
			if r.Floor > 0 {
				minFloor = min(minFloor, 100*r.Floor)
			}
		}
		if err := addSystemPoints(p95, lat, s); err != nil {
			return err
		}
		if err := addSystemPoints(acc, ac, s); err != nil {
			return err
		}
	}
	if maxLoad == 0 {
		return fmt.Errorf("plot comparison: no probes")
	}
	if err := addHLine(p95, slo, maxLoad, fmt.Sprintf("SLO %g ms", slo)); err != nil {
		return err
	}
	if paired {
		if err := addHLine(acc, -100*c.Settings.AccuracyDrop, maxLoad, fmt.Sprintf("floor −%g point", 100*c.Settings.AccuracyDrop)); err != nil {
			return err
		}
	} else if minFloor < 100 {
		if err := addHLine(acc, minFloor, maxLoad, fmt.Sprintf("lowest floor %.2f%%", minFloor)); err != nil {
			return err
		}
	}
	p95.Y.Min, p95.Y.Max = 0, top*1.05
	p95.Legend.Top = true
	acc.Legend.Top, acc.Legend.Left = false, true
	return writePanels(filepath.Join(dir, "compare.png"), 900, 400, [][]*plot.Plot{{p95, acc}})
}

// newPlot is an empty plot with its title and axis labels.
func newPlot(title, x, y string) *plot.Plot {
	pl := plot.New()
	pl.Title.Text = title
	pl.X.Label.Text = x
	pl.Y.Label.Text = y
	return pl
}

// runsByLoad are a system's probes and runs at multiples, by load offered.
func runsByLoad(s SystemCapacity) []CompareProbe {
	runs := slices.Concat(s.Probes, s.AtMultiples)
	slices.SortFunc(runs, func(a, b CompareProbe) int {
		switch {
		case a.Load < b.Load:
			return -1
		case a.Load > b.Load:
			return 1
		}
		return 0
	})
	return runs
}

// addSystemPoints adds xys to pl as a line with points in the system's
// colour, named in the legend; nothing when xys is empty.
func addSystemPoints(pl *plot.Plot, xys plotter.XYs, s SystemCapacity) error {
	if len(xys) == 0 {
		return nil
	}
	line, points, err := plotter.NewLinePoints(xys)
	if err != nil {
		return err
	}
	line.Color, points.Color = systemColor(s.System), systemColor(s.System)
	line.Width = vg.Points(1.5)
	pl.Add(line, points)
	pl.Legend.Add(s.Label, line, points)
	return nil
}

// PlotTrace writes trace.png into dir: the offered load, every system's
// per-second p95 and the gear answering most items each second.
func PlotTrace(t *TraceReport, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	load := newPlot("offered load", "", "items/s")
	lat := newPlot("p95 per second (by send time)", "", "p95 (ms), clipped")
	gear := newPlot("gear answering most items (index in the system's plan)", "seconds", "gear")
	top := 4 * t.SLOP95Ms
	n := 0
	for i, s := range t.Systems {
		var offered, p95, g plotter.XYs
		for _, sec := range s.PerSecond {
			x := float64(sec.Second)
			offered = append(offered, plotter.XY{X: x, Y: sec.OfferedQPS})
			if sec.Answered > 0 {
				p95 = append(p95, plotter.XY{X: x, Y: min(sec.P95Ms, top)})
				g = append(g, plotter.XY{X: x, Y: float64(sec.GearIndex)})
			}
		}
		n = max(n, len(s.PerSecond))
		if i == 0 && len(offered) > 0 {
			l, err := plotter.NewLine(offered)
			if err != nil {
				return err
			}
			l.Width = vg.Points(1.5)
			load.Add(l)
		}
		for _, d := range []struct {
			pl  *plot.Plot
			xys plotter.XYs
		}{{lat, p95}, {gear, g}} {
			if len(d.xys) == 0 {
				continue
			}
			l, err := plotter.NewLine(d.xys)
			if err != nil {
				return err
			}
			l.Color, l.Width = systemColor(s.System), vg.Points(1.2)
			if d.pl == gear {
				l.StepStyle = plotter.PostStep
			}
			d.pl.Add(l)
			d.pl.Legend.Add(s.Label, l)
		}
	}
	if n == 0 {
		return fmt.Errorf("plot trace: no seconds")
	}
	if err := addHLine(lat, t.SLOP95Ms, float64(n), fmt.Sprintf("SLO %g ms", t.SLOP95Ms)); err != nil {
		return err
	}
	lat.Y.Min, lat.Y.Max = 0, top*1.05
	lat.Legend.Top = true
	gear.Legend.Top = true
	gear.Y.Min = 0
	return writePanels(filepath.Join(dir, "trace.png"), 900, 750, [][]*plot.Plot{{load}, {lat}, {gear}})
}

// addHLine adds a dashed red line at y from 0 to x, in the legend.
func addHLine(pl *plot.Plot, y, x float64, label string) error {
	l, err := plotter.NewLine(plotter.XYs{{X: 0, Y: y}, {X: x, Y: y}})
	if err != nil {
		return err
	}
	l.Color = color.RGBA{R: 200, A: 255}
	l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	pl.Add(l)
	pl.Legend.Add(label, l)
	return nil
}

// writePanels draws rows of plots into a PNG file of w × h points.
func writePanels(file string, w, h float64, plots [][]*plot.Plot) error {
	for _, row := range plots {
		for _, pl := range row {
			pl.Add(plotter.NewGrid())
		}
	}
	c, err := draw.NewFormattedCanvas(vg.Points(w), vg.Points(h), "png")
	if err != nil {
		return err
	}
	tiles := draw.Tiles{Rows: len(plots), Cols: len(plots[0]), PadX: vg.Points(20), PadY: vg.Points(20),
		PadTop: vg.Points(10), PadBottom: vg.Points(10), PadLeft: vg.Points(10), PadRight: vg.Points(10)}
	canvases := plot.Align(plots, tiles, draw.New(c))
	for i := range plots {
		for j := range plots[i] {
			plots[i][j].Draw(canvases[i][j])
		}
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", file, err)
	}
	return f.Close()
}

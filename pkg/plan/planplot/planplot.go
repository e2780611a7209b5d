// Package planplot draws a gear plan with gonum/plot: the accuracy-versus-
// cost Pareto front the planner found, with the gears it chose marked, and
// the planned accuracy, cost per item and predicted p95 against load.
//
// It lives apart from package plan so that the services, which import plan,
// do not link the plotting and font libraries.
package planplot

import (
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/plan/planner"
)

// Front returns the Pareto front the planner stored in the plan's planner
// metadata (key "pareto"), or nil.
func Front(p *plan.Plan) []planner.FrontPoint {
	raw, ok := p.Planner["pareto"]
	if !ok {
		return nil
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return nil
	}
	var out []planner.FrontPoint
	if json.Unmarshal(b, &out) != nil {
		return nil
	}
	return out
}

// WriteFile draws the plan into file; the format follows the extension
// (svg, png, pdf, eps, jpg, tif).
func WriteFile(p *plan.Plan, file string) error {
	format := strings.TrimPrefix(strings.ToLower(filepath.Ext(file)), ".")
	f, err := os.Create(file)
	if err != nil {
		return fmt.Errorf("plot plan: %w", err)
	}
	if err := Write(p, f, format); err != nil {
		f.Close()
		return fmt.Errorf("plot plan %s: %w", file, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("plot plan: %w", err)
	}
	return nil
}

// Write draws the plan in the given format: four panels, the Pareto front
// (cost per item against accuracy, chosen gears marked) and accuracy, cost
// per item and predicted p95 against load.
func Write(p *plan.Plan, w io.Writer, format string) error {
	if len(p.Gears) == 0 {
		return fmt.Errorf("plan has no gears")
	}
	front, err := frontPlot(p)
	if err != nil {
		return err
	}
	acc, err := loadPlot(p, "accuracy (%)", func(g plan.Gear) float64 { return 100 * g.Predicted.Accuracy })
	if err != nil {
		return err
	}
	cost, err := loadPlot(p, "cost (runner-ms/item)", func(g plan.Gear) float64 { return g.Predicted.CostMsPerItem })
	if err != nil {
		return err
	}
	p95, err := loadPlot(p, "predicted p95 (ms)", func(g plan.Gear) float64 { return g.Predicted.P95Ms })
	if err != nil {
		return err
	}
	slo, err := plotter.NewLine(plotter.XYs{{X: 0, Y: p.SLO.P95Ms}, {X: maxLoad(p), Y: p.SLO.P95Ms}})
	if err != nil {
		return err
	}
	slo.Color = color.RGBA{R: 200, A: 255}
	slo.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	p95.Add(slo)
	p95.Legend.Add(fmt.Sprintf("SLO %gms", p.SLO.P95Ms), slo)
	p95.Legend.Top = true
	p95.Y.Min = 0
	p95.Y.Max = 1.15 * p.SLO.P95Ms

	c, err := draw.NewFormattedCanvas(vg.Points(900), vg.Points(650), format)
	if err != nil {
		return err
	}
	plots := [][]*plot.Plot{{front, acc}, {cost, p95}}
	tiles := draw.Tiles{Rows: 2, Cols: 2, PadX: vg.Points(20), PadY: vg.Points(20), PadTop: vg.Points(10), PadBottom: vg.Points(10), PadLeft: vg.Points(10), PadRight: vg.Points(10)}
	canvases := plot.Align(plots, tiles, draw.New(c))
	for i := range plots {
		for j := range plots[i] {
			plots[i][j].Draw(canvases[i][j])
		}
	}
	_, err = c.WriteTo(w)
	return err
}

func frontPlot(p *plan.Plan) (*plot.Plot, error) {
	pl := plot.New()
	pl.Title.Text = fmt.Sprintf("%s: Pareto front and gears", p.Pipeline)
	pl.X.Label.Text = "cost (runner-ms/item)"
	pl.Y.Label.Text = "accuracy (%)"
	pl.Add(plotter.NewGrid())
	if front := Front(p); len(front) > 0 {
		xys := make(plotter.XYs, len(front))
		for i, f := range front {
			xys[i] = plotter.XY{X: f.CostMsPerItem, Y: 100 * f.Accuracy}
		}
		line, points, err := plotter.NewLinePoints(xys)
		if err != nil {
			return nil, err
		}
		line.StepStyle = plotter.PostStep
		line.Color = color.Gray{Y: 140}
		points.GlyphStyle.Radius = vg.Points(1.5)
		pl.Add(line, points)
		pl.Legend.Add("Pareto front", line, points)
	}
	xys := make(plotter.XYs, len(p.Gears))
	labels := make([]string, len(p.Gears))
	for i, g := range p.Gears {
		xys[i] = plotter.XY{X: g.Predicted.CostMsPerItem, Y: 100 * g.Predicted.Accuracy}
		labels[i] = g.ID
	}
	gears, err := plotter.NewScatter(xys)
	if err != nil {
		return nil, err
	}
	gears.GlyphStyle.Shape = draw.RingGlyph{}
	gears.GlyphStyle.Radius = vg.Points(4)
	gears.GlyphStyle.Color = color.RGBA{B: 200, A: 255}
	names, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: labels})
	if err != nil {
		return nil, err
	}
	for i := range names.TextStyle {
		names.TextStyle[i].XAlign = draw.XLeft
	}
	names.Offset = vg.Point{X: vg.Points(5), Y: vg.Points(2)}
	pl.Add(gears, names)
	pl.Legend.Add("gears", gears)
	pl.Legend.Left = false
	pl.Legend.Top = false
	return pl, nil
}

func maxLoad(p *plan.Plan) float64 {
	return p.Gears[len(p.Gears)-1].MaxQPS
}

// loadPlot draws a gear quantity as a step function of load.
func loadPlot(p *plan.Plan, label string, y func(plan.Gear) float64) (*plot.Plot, error) {
	pl := plot.New()
	pl.Title.Text = label + " against load"
	pl.X.Label.Text = "load (requests/s)"
	pl.Y.Label.Text = label
	pl.Add(plotter.NewGrid())
	var xys plotter.XYs
	lo := 0.0
	for _, g := range p.Gears {
		xys = append(xys, plotter.XY{X: lo, Y: y(g)}, plotter.XY{X: g.MaxQPS, Y: y(g)})
		lo = g.MaxQPS
	}
	line, err := plotter.NewLine(xys)
	if err != nil {
		return nil, err
	}
	line.Width = vg.Points(1.5)
	line.Color = color.RGBA{B: 200, A: 255}
	pl.Add(line)
	pl.X.Min = 0
	return pl, nil
}

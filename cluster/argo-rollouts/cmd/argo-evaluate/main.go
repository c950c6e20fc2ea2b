// Command argo-evaluate judges measurements exactly as Argo Rollouts' analysis controller does: for each JSON line
// {"result": [numbers], "successCondition": "...", "failureCondition": "..."} on stdin it prints one JSON line
// {"phase": "Successful|Failed|Inconclusive|Error", "message": "..."} from Argo's own evaluate.EvaluateResult.
// The unit tests of the rendered AnalysisTemplates use it (no controller, no Prometheus: the counts are given).
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	"github.com/argoproj/argo-rollouts/pkg/apis/rollouts/v1alpha1"
	"github.com/argoproj/argo-rollouts/utils/evaluate"
	log "github.com/sirupsen/logrus"
)

type measurement struct {
	Result           []float64 `json:"result"`
	SuccessCondition string    `json:"successCondition"`
	FailureCondition string    `json:"failureCondition"`
}

type verdict struct {
	Phase   v1alpha1.AnalysisPhase `json:"phase"`
	Message string                 `json:"message,omitempty"`
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<24)
	out := json.NewEncoder(os.Stdout)
	logger := *log.NewEntry(log.New())
	for in.Scan() {
		var m measurement
		if err := json.Unmarshal(in.Bytes(), &m); err != nil {
			fmt.Fprintf(os.Stderr, "argo-evaluate: bad input line: %v\n", err)
			os.Exit(2)
		}
		metric := v1alpha1.Metric{SuccessCondition: m.SuccessCondition, FailureCondition: m.FailureCondition}
		phase, err := evaluate.EvaluateResult(m.Result, metric, logger)
		found := verdict{Phase: phase}
		if err != nil {
			found.Message = err.Error()
		}
		if err := out.Encode(found); err != nil {
			os.Exit(1)
		}
	}
}

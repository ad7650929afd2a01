package supervisor

import (
	"fmt"

	"rainforest/ledger"
)

// RequestProblems lists what the supervisor refuses in req on its own,
// before the ledger is asked. Today that is every PCI device: passthrough
// does not exist yet, so nothing would attach a device the ledger set
// aside, and the subOS would hold it for nothing. The ledger's device
// accounting stays, for when passthrough comes.
func RequestProblems(req ledger.Request) []ledger.Problem {
	var probs []ledger.Problem
	for i, addr := range req.Devices {
		probs = append(probs, ledger.Problem{
			Field:   fmt.Sprintf("devices[%d]", i),
			Message: "PCI passthrough is not supported yet; nothing would attach " + addr,
		})
	}
	return probs
}

// Admission is a ledger behind the supervisor's own refusals: Check and
// Reserve refuse what RequestProblems refuses before they ask the ledger.
// It satisfies layout.Checker, so that rfm check and rfm run refuse a
// layout for the same reasons as Create and POST /v1/check refuse a spec.
type Admission struct{ Ledger *ledger.Ledger }

// Check lists everything wrong with req; it changes nothing.
func (a Admission) Check(req ledger.Request) []ledger.Problem {
	return append(RequestProblems(req), a.Ledger.Check(req)...)
}

// Reserve reserves req's resources on the ledger unless the supervisor
// refuses req; the refusal is a *ProblemsError.
func (a Admission) Reserve(req ledger.Request) (ledger.Allocation, error) {
	if probs := RequestProblems(req); len(probs) > 0 {
		return ledger.Allocation{}, &ProblemsError{Problems: probs}
	}
	return a.Ledger.Reserve(req)
}

package stageworker

import "github.com/cascadeserve/cascadeserve/internal/natsbus"

// ackLabels are the values of the acks metric's action label, by the
// acknowledgement natsbus.DecideAck decides: a message's last try is
// dead-lettered and terminated, a rejected one terminated.
var ackLabels = [...]string{
	natsbus.AckDone:    "ack",
	natsbus.AckRetry:   "nak",
	natsbus.AckLastTry: "dead_letter",
	natsbus.AckReject:  "term",
}

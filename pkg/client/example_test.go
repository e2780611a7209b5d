package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/cascadeserve/cascadeserve/pkg/client"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// The examples compile but do not run: they need a running pipeline
// (`cascadeserve up`).

// Connect as client billing of deploy/nats/accounts.conf: its own user and
// inboxes.
func ExampleNew() {
	nc, err := nats.Connect(nats.DefaultURL,
		nats.UserInfo("billing", os.Getenv("CASCADE_BILLING_PASSWORD")),
		nats.CustomInboxPrefix("_INBOX.billing"))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	c, err := client.New(nc, "mnist", client.WithClient("billing"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(c.Pipeline(), c.Name())
}

// connect returns a client of the mnist pipeline on the local NATS server
// (ExampleNew shows the options of a connection) and the function that
// closes its connection.
func connect() (*client.Client, func()) {
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		log.Fatal(err)
	}
	c, err := client.New(nc, "mnist")
	if err != nil {
		log.Fatal(err)
	}
	return c, nc.Close
}

func ExampleClient_Infer() {
	c, closeConn := connect()
	defer closeConn()
	ctx := context.Background()

	// One 28×28 image as 8-bit pixels (FP32 works too: InferFloat32).
	pixels := make([]byte, 28*28)
	res, err := c.Infer(ctx, wire.Tensor{Datatype: wire.UINT8, Shape: []int64{1, 28, 28}, Data: pixels},
		client.WithTimeout(500*time.Millisecond), client.WithIdempotencyKey("order-42"))
	var werr *wire.Error
	switch {
	case errors.As(err, &werr) && werr.Code == wire.CodeOverloaded:
		log.Print("overloaded: back off and retry")
		return
	case err != nil:
		log.Fatal(err)
	}
	fmt.Println(res.Label, res.Confidence, res.AnsweredBy, res.Gear, res.Degraded)

	// A batch of four images: one result per image, in order.
	batch, err := c.InferFloat32(ctx, []int64{4, 1, 28, 28}, make([]float32, 4*28*28))
	if err != nil {
		log.Fatal(err)
	}
	for _, item := range batch.Items {
		if item.Error != nil {
			fmt.Println(item.Index, item.Error.Code)
			continue
		}
		fmt.Println(item.Index, item.Label)
	}
}

func ExampleClient_Submit() {
	c, closeConn := connect()
	defer closeConn()
	req := &wire.Request{ID: "invoice-7", Input: wire.FP32Tensor([]int64{1, 28, 28}, make([]float32, 28*28))}
	job, err := c.Submit(context.Background(), req, client.WithMsgID("invoice-7"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(job.ID, job.Sequence, job.Duplicate)
}

func ExampleClient_Results() {
	c, closeConn := connect()
	defer closeConn()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Each result is acknowledged once the handler returns nil.
	err := c.Results(ctx, func(r *wire.Result) error {
		if r.Error != nil {
			fmt.Println(r.ID, r.Error.Code)
			return nil
		}
		fmt.Println(r.ID, r.Label, r.Confidence)
		return nil
	})
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Fatal(err)
	}
}

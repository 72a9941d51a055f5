-- Where the queue a relay handed a message to stored it (its JetStream sequence), so the
-- relay can ask whether the queue still holds a message whose outcome never came back.
ALTER TABLE queue ADD COLUMN sequence BIGINT;
-- How many times the relay published the message again after the queue lost it: each copy
-- goes out under a message id of its own, which the queue cannot drop as a duplicate of the
-- lost one.
ALTER TABLE queue ADD COLUMN copies BIGINT NOT NULL DEFAULT 0;

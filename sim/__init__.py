"""The MQTT test harness: a virtual fleet with known ground truth."""

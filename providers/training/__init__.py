"""What every local trainer shares about training data: rendering rows into token ids and
trained-token masks, and the pre-flight report computed from them."""

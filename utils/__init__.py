"""What every algorithm shares and none defines: data, the phase runner, evaluation, checkpoints, logging."""

"""Two augmented views of one image, for methods trained on a weak/strong pair (MLKD)."""
import torch


class TwoViews:
    """``image -> torch.stack([weak(image), strong(image)])``, shape (2, C, H, W); a batch is then (N, 2, C, H, W)
    and the forward proc ``forward_two_views`` runs the model on each view. Both transforms must end in tensors of
    one shape.
    """
    def __init__(self, weak, strong):
        self.weak = weak
        self.strong = strong

    def __call__(self, image):
        return torch.stack([self.weak(image), self.strong(image)])

    def __repr__(self):
        return f'{type(self).__name__}(weak={self.weak}, strong={self.strong})'

"""gpufocus.batchmath against torch's own reductions and solvers, and its batch independence."""

import pytest
import torch

from gpufocus.batchmath import cholesky, cholesky_solve, fixed_sum, inverse3x3, matmul3x3


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 13, 100, 1023, 1025])
def test_fixed_sum_is_the_sum(device, n):
    x = torch.randn(4, 3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n)).to(device)
    torch.testing.assert_close(fixed_sum(x), x.sum(-1))
    torch.testing.assert_close(fixed_sum(x, 1), x.sum(1))
    torch.testing.assert_close(fixed_sum(x, 0), x.sum(0))


def test_fixed_sum_of_a_row_does_not_depend_on_the_others(device):
    x = torch.randn(5, 187_500, generator=torch.Generator().manual_seed(0)).to(device)
    whole = fixed_sum(x)
    for i in range(5):
        assert torch.equal(fixed_sum(x[i : i + 1]), whole[i : i + 1])
    assert torch.equal(fixed_sum(x.T.contiguous(), 0), whole)  # the same order along any dimension


def test_cholesky_solve_solves(device):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 8, 8, dtype=torch.float64, generator=g)
    h = (a @ a.transpose(1, 2) + 0.1 * torch.eye(8, dtype=torch.float64)).to(device)
    b = torch.randn(6, 8, dtype=torch.float64, generator=g).to(device)
    solved = cholesky_solve(cholesky(h), b)
    torch.testing.assert_close(solved, torch.linalg.solve(h, b))
    assert torch.equal(cholesky_solve(cholesky(h[2:3]), b[2:3]), solved[2:3])


def test_3x3_products_and_inverses(device):
    g = torch.Generator().manual_seed(2)
    m = (torch.eye(3, dtype=torch.float64) + 0.3 * torch.randn(7, 3, 3, dtype=torch.float64, generator=g)).to(device)
    n = torch.randn(7, 3, 3, dtype=torch.float64, generator=g).to(device)
    torch.testing.assert_close(matmul3x3(m, n), m @ n)
    torch.testing.assert_close(inverse3x3(m), torch.linalg.inv(m))
